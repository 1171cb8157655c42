"""The replica model: vLLM V1 scheduling rules on small hand-made cases, and the sanity invariants
(conservation, KV never above capacity, determinism, monotone static cost)."""

from __future__ import annotations

import pytest

from kvcap.capacity import catalog
from kvcap.capacity.configs import load_model
from kvcap.capacity.latency import StepModel, step_model
from kvcap.capacity.memory import ServeArgs, estimate
from kvcap.sim.engine import EngineConfig, Replica, Req


def _model() -> StepModel:
    arch = load_model("meta-llama/Llama-3.1-8B-Instruct")
    gpu = catalog.get_gpu("H100-80GB")
    est = estimate(arch, gpu, ServeArgs(max_model_len=8192))
    return step_model(arch, gpu, tp=1, weight_bytes_per_gpu=est.weights_bytes,
                      kv_bytes_per_token=est.kv_bytes_per_token)


def _replica(blocks: int, seqs: int = 256, budget: int = 8192, bs: int = 16) -> Replica:
    return Replica(cfg=EngineConfig(total_blocks=blocks, block_size=bs, max_num_seqs=seqs,
                                    max_num_batched_tokens=budget),
                   model=_model(), created=0.0, ready_at=0.0)


def _req(i: int, prompt: int, output: int, hashes: tuple[int, ...] = ()) -> Req:
    return Req(i, 0.0, prompt, output, hashes)


def test_single_request_ttft_and_tpot_follow_the_step_model() -> None:
    rep = _replica(10_000)
    r = _req(0, 1000, 11)
    rep.add(r)
    done: list[Req] = []
    rep.advance(100.0, done)
    assert done == [r]
    m = rep.model
    assert r.first_token == pytest.approx(m.step_time(1000, 1000 * 1001 / 2, 0, 0))
    tpot = (r.finish - r.first_token) / 10
    assert tpot == pytest.approx(m.decode_step(1, 1005), rel=0.02)
    assert rep.used_blocks == 0


def test_chunked_prefill_splits_long_prompt_by_the_token_budget() -> None:
    rep = _replica(10_000, budget=512)
    r = _req(0, 2000, 2)
    rep.add(r)
    done: list[Req] = []
    steps = 0
    while r.first_token < 0:
        rep._step(done)
        steps += 1
    assert steps == 4  # 512 + 512 + 512 + 464


def test_max_num_seqs_caps_the_batch() -> None:
    rep = _replica(10_000, seqs=2)
    for i in range(5):
        rep.add(_req(i, 100, 50))
    rep._step([])
    assert len(rep.running) == 2 and len(rep.waiting) == 3
    assert rep.capacity_waiting == 3


def test_admission_waits_for_blocks_and_preemption_evicts_the_newest() -> None:
    # 20 blocks of 16 tokens = 320 tokens. Two requests of 150 prompt tokens need 10 blocks each;
    # their decodes then need an 11th block each: the newest is preempted by recompute.
    rep = _replica(20)
    a, b = _req(0, 150, 40), _req(1, 150, 40)
    rep.add(a)
    rep.add(b)
    done: list[Req] = []
    rep.advance(60.0, done)
    assert {r.id for r in done} == {0, 1}
    assert b.preemptions >= 1 and a.preemptions == 0
    assert rep.counters.preemptions == b.preemptions
    assert rep.peak_blocks <= 20


def test_a_request_that_never_fits_waits_without_spinning() -> None:
    rep = _replica(4)  # 64 tokens
    rep.add(_req(0, 1000, 5))
    done: list[Req] = []
    rep.advance(10.0, done)
    assert not done and len(rep.waiting) == 1 and rep.clock == 10.0


def test_prefix_cache_skips_cached_blocks() -> None:
    rep = _replica(10_000)
    first = _req(0, 2048, 2, hashes=(1, 2, 3, 4))
    rep.add(first)
    done: list[Req] = []
    rep.advance(10.0, done)
    again = _req(1, 2048, 2, hashes=(1, 2, 3, 9))
    rep.add(again)
    rep.advance(20.0, done)
    assert again.prefix_hit_tokens == 3 * 512
    assert rep.counters.prefix_hits == 3 * 512
    assert rep.counters.prefix_queries == 2 * 2048


def test_fast_forward_matches_stepping_one_by_one() -> None:
    def run(fast: bool) -> list[tuple[float, float]]:
        rep = _replica(2000)
        reqs = [_req(i, 300 + 10 * i, 200 + 37 * i) for i in range(6)]
        for r in reqs:
            rep.add(r)
        done: list[Req] = []
        if fast:
            rep.advance(1000.0, done)
        else:
            while rep.busy():
                rep._step(done)
        return [(r.first_token, r.finish) for r in reqs]

    for (f1, e1), (f2, e2) in zip(run(True), run(False), strict=True):
        assert f1 == pytest.approx(f2)
        assert e1 == pytest.approx(e2, rel=1e-9)


