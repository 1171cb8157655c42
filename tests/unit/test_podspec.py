"""The pod policy (kvcap.controller.podspec), table-driven; the real apiserver's admission of the
same pods (Pod Security `baseline`, a `vllm` Service) is in tests/integration/test_pod_policy.py."""

from __future__ import annotations

from typing import Any

import pytest
from operator_factories import MODEL, make_pool, make_spec
from pydantic import ValidationError

from kvcap.api.models import ModelDeploymentSpec, abbreviated_planned_flag
from kvcap.controller import podspec
from kvcap.controller.podspec import PodPolicy
from kvcap.controller.render import Owner, RenderOptions, render_pdb, rollout_strategy

GIB = 2**30
OWNER = Owner("llama", "team-a", "uid-1")


def template(
    spec: ModelDeploymentSpec | None = None, model_bytes: int | None = None, **kw: Any
) -> dict[str, Any]:
    return podspec.render_pod_template(
        labels={"a": "b"},
        spec=spec or make_spec(),
        pool=kw.pop("pool", make_pool()),
        policy=kw.pop("policy", PodPolicy()),
        model_bytes=model_bytes,
        **kw,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--model", MODEL, "--port", "8000"), [MODEL, "--port", "8000"]),
        (("--served-model-name", "x", "--model", MODEL), [MODEL, "--served-model-name", "x"]),
        ((f"--model={MODEL}", "-tp", "2"), [MODEL, "-tp", "2"]),
        ((MODEL, "--port", "8000"), [MODEL, "--port", "8000"]),  # already positional
        ((), []),
    ],
)
def test_the_model_is_positional(args: tuple[str, ...], expected: list[str]) -> None:
    assert podspec.serve_args(args) == expected


@pytest.mark.parametrize(
    ("floor", "model_bytes", "expected"),
    [
        (1800, None, 1800),  # unknown weights: the configured floor
        (1800, 16 * 10**9, 1800),  # Llama-3.1-8B downloads well within the floor
        # DeepSeek-V3 (~673 GB of weights): 600 s + 673e9 B / 100 MiB/s, far beyond 30 min
        (1800, 672_879_777_280, 600 + 6418),
        (600, 2 * 10**9, 620),
    ],
)
def test_startup_budget_grows_with_the_weights(
    floor: int, model_bytes: int | None, expected: int
) -> None:
    assert podspec.startup_seconds(PodPolicy(startup_timeout_seconds=floor), model_bytes) == expected


def test_a_deepseek_v3_sized_download_is_not_killed_by_the_startup_probe() -> None:
    spec = make_spec(model={"name": "deepseek-ai/DeepSeek-V3"})
    model_bytes = podspec.model_weight_bytes(spec, None)
    assert model_bytes is not None and model_bytes > 600 * 10**9
    probe = template(spec, model_bytes)["spec"]["containers"][0]["startupProbe"]
    allowed = probe["failureThreshold"] * probe["periodSeconds"]
    assert allowed >= model_bytes / (100 * 2**20)  # the whole download at 100 MiB/s
    assert allowed > 1800


@pytest.mark.parametrize(
    ("gpus", "model_bytes", "shm", "cpu", "memory", "disk"),
    [
        (1, None, "16Gi", "4", "40Gi", "20Gi"),
        (1, 16 * GIB, "16Gi", "4", "40Gi", "36Gi"),  # 8 + 16 shm + 16 weights
        (4, 64 * GIB, "32Gi", "10", "104Gi", "84Gi"),  # the whole replica on one pod
    ],
)
def test_requests_are_never_best_effort(
    gpus: int, model_bytes: int | None, shm: str, cpu: str, memory: str, disk: str
) -> None:
    spec = make_spec(vllm={"shmSize": shm})
    pool = make_pool(gpus_per_replica=gpus, tensor_parallel_size=gpus)
    got = podspec.resources(spec, pool, gpus, model_bytes)
    assert got == {
        "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus),
                     "ephemeral-storage": disk},
        "limits": {"nvidia.com/gpu": str(gpus)},  # no CPU/memory limit: Burstable, not throttled
    }


def test_a_multi_node_pod_stages_only_its_share_of_the_weights() -> None:
    pool = make_pool(gpus_per_replica=16, tensor_parallel_size=8, pipeline_parallel_size=2)
    assert podspec.pod_share(160 * GIB, 8, pool) == 80 * GIB


def test_model_cache_claim_replaces_the_empty_dir_and_its_disk_request() -> None:
    spec = make_spec(vllm={"modelCache": {"claimName": "hf-cache"}})
    pod = template(spec, 16 * GIB)["spec"]
    assert pod["volumes"][1] == {
        "name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"},
    }
    requests = pod["containers"][0]["resources"]["requests"]
    assert "ephemeral-storage" not in requests
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"] == "/model-cache"
    assert {"name": "model-cache", "mountPath": "/model-cache"} in pod["containers"][0][
        "volumeMounts"
    ]


def test_default_model_cache_is_an_empty_dir_sized_from_the_weights() -> None:
    volumes = template(make_spec(), 16 * GIB)["spec"]["volumes"]
    assert volumes[1] == {"name": "model-cache", "emptyDir": {"sizeLimit": "36Gi"}}


@pytest.mark.parametrize("role", ["server", "worker"])
def test_pod_hardening(role: str) -> None:
    pod = template(role=role)["spec"]
    assert pod["enableServiceLinks"] is False  # a `vllm` Service must not inject VLLM_PORT
    assert pod["automountServiceAccountToken"] is False
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    assert not any("hostPath" in v for v in pod["volumes"])  # baseline forbids hostPath


def test_streams_get_time_to_finish() -> None:
    policy = PodPolicy(drain_seconds=300, prestop_seconds=15)
    pod = template(policy=policy)["spec"]
    assert pod["terminationGracePeriodSeconds"] == 315
    assert pod["containers"][0]["lifecycle"] == {
        "preStop": {"exec": {"command": ["sleep", "15"]}}
    }
    worker = template(policy=policy, role="worker")["spec"]["containers"][0]
    assert "lifecycle" not in worker and "startupProbe" not in worker


def test_user_env_cannot_move_the_cache_or_leak_a_token_literal() -> None:
    spec = make_spec(
        model={"name": MODEL, "hfTokenSecretRef": {"name": "hf", "key": "token"}},
        vllm={"env": [{"name": "HF_HOME", "value": "/tmp"}, {"name": "HF_TOKEN", "value": "x"}]},
    )
    env = {e["name"]: e for e in podspec.env(spec)}
    assert env["HF_HOME"]["value"] == "/model-cache"
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }


@pytest.mark.parametrize(
    ("replicas", "max_unavailable"),
    [(1, 0), (2, 1), (8, 1)],
)
def test_rollouts_progress_on_a_full_gpu_pool(replicas: int, max_unavailable: int) -> None:
    assert rollout_strategy(replicas) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": max_unavailable},
    }


def test_a_multi_node_pool_budget_covers_workers_too() -> None:
    pool = make_pool(gpus_per_replica=16)
    single = render_pdb(OWNER, pool)["spec"]["selector"]["matchLabels"]
    multi = render_pdb(OWNER, pool, multi_node=True)["spec"]["selector"]["matchLabels"]
    assert single["kvcap.io/role"] == "server"
    assert multi == {"kvcap.io/model-deployment": "llama", "kvcap.io/pool": "default"}


@pytest.mark.parametrize(
    ("arg", "planned"),
    [
        ("--gpu-memory-util=0.99", "--gpu-memory-utilization"),
        ("--gpu_memory_util", "--gpu-memory-utilization"),
        ("--max-model=4096", "--max-model-len"),
        ("--tensor-par", "--tensor-parallel-size"),
        ("--served-model", "--served-model-name"),
        ("--kv-cache-mem=1", "--kv-cache-memory-bytes"),
        ("--max-model-len", None),  # the full flag: rejected by planned_flag_of instead
        ("--enable-chunked-prefill", None),
        ("--max-num-partial-prefills=2", None),
        ("--model-impl=vllm", None),  # longer than a planned flag, not a prefix of one
        ("--seed=0", None),
        ("0.99", None),
        ("--ma", None),  # too short to count
    ],
)
def test_abbreviations_of_planned_flags(arg: str, planned: str | None) -> None:
    assert abbreviated_planned_flag(arg) == planned


def test_an_abbreviated_planned_flag_is_rejected_with_the_full_name() -> None:
    with pytest.raises(ValidationError) as err:
        make_spec(vllm={"extraArgs": ["--gpu-memory-util=0.99"]})
    text = str(err.value)
    assert "'--gpu-memory-util'" in text and "'--gpu-memory-utilization'" in text


def test_weight_bytes_never_come_from_a_local_path() -> None:
    spec = make_spec(model={"name": "/etc"})
    assert podspec.model_weight_bytes(spec, None) is None
    assert podspec.model_weight_bytes(make_spec(model={"name": "acme/unknown"}), None) is None
    assert (podspec.model_weight_bytes(make_spec(), None) or 0) > 15 * 10**9


def test_render_options_carry_the_pod_policy() -> None:
    options = RenderOptions(startup_timeout_seconds=900, drain_seconds=60, prestop_seconds=5)
    assert options.pod_policy() == PodPolicy(
        startup_timeout_seconds=900, drain_seconds=60, prestop_seconds=5
    )


def test_children_size_pods_from_the_catalog_weights() -> None:
    from operator_factories import make_plan

    from kvcap.controller.render import render_children

    objs = render_children(OWNER, make_spec(), make_plan(make_pool()), RenderOptions())
    pod = objs[0]["spec"]["template"]["spec"]
    # Llama-3.1-8B: ~16 GB of bf16 weights -> 8 + 16 (shm) + 15 (weights) GiB
    assert pod["containers"][0]["resources"]["requests"]["memory"] == "39Gi"
    assert pod["volumes"][1]["emptyDir"]["sizeLimit"] == "35Gi"


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["--speculative-config={\"num_speculative_tokens\": 3}"], ["--speculative-config"]),
        (["--cpu_offload_gb=8", "--seed=0"], ["--cpu-offload-gb"]),
        (["--enable-lora", "--max-loras", "4", "--enable-lora"], ["--enable-lora", "--max-loras"]),
        (["--enable-chunked-prefill", "--seed=0"], []),
    ],
)
def test_flags_the_plan_does_not_model_are_found(args: list[str], flags: list[str]) -> None:
    assert podspec.unmodelled_flags(args) == flags


def test_flags_the_plan_does_not_model_are_reported_in_capacity_planned() -> None:
    from kvcap.controller.conditions import Check

    planned = Check("True", "PlanFits", "2 GPUs (default: 2 x H100-80GB TP 1)")
    spec = make_spec(vllm={"extraArgs": ["--speculative-config={}", "--cpu-offload-gb=8"]})
    got = podspec.note_unmodelled_flags(planned, spec)
    assert (got.status, got.reason) == ("True", "PlanFits")
    assert "'--speculative-config' adds a draft model's weights and KV cache" in got.message
    assert "'--cpu-offload-gb' moves weights to host memory" in got.message
    assert podspec.note_unmodelled_flags(planned, make_spec()) == planned
    failed = Check("False", "Infeasible", "no")
    assert podspec.note_unmodelled_flags(failed, spec) == failed


@pytest.mark.parametrize("name", ["../etc", "acme/../../secret", "..", "/models/../x"])
def test_model_names_with_dot_dot_segments_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match=r"must not contain '\.\.' path segments"):
        make_spec(model={"name": name})
    with pytest.raises(ValidationError, match=r"must not contain '\.\.' path segments"):
        make_spec(model={"name": MODEL, "revision": name})


@pytest.mark.parametrize("name", [MODEL, "/models/llama", "acme/v1..2", "gpt2"])
def test_ordinary_model_names_pass(name: str) -> None:
    assert make_spec(model={"name": name}).model.name == name


def test_a_hub_models_weights_size_its_pods_and_stay_pinned_with_the_plan() -> None:
    """A model outside the catalog: its config.json (as the Hub serves it) sizes the startup budget;
    a later, pinned reconcile reads no config.json and renders the very same pods."""
    import json
    from pathlib import Path

    from operator_factories import make_plan as plan_of
    from test_decide import md, observation, planner

    from kvcap.controller.conditions import Check
    from kvcap.controller.decide import ActOutcome, ModelConfig, Policy, assess, decide

    data = Path(podspec.__file__).resolve().parents[1] / "capacity" / "data" / "models"
    config = json.loads((data / "deepseek-ai--DeepSeek-V3.json").read_text())["config"]
    spec = {"model": {"name": "acme/deepseek-v3-finetune"},
            "workload": {"maxContextTokens": 8192, "targetConcurrency": 8}}
    policy = Policy(plan_fn=planner(plan_of(make_pool(gpus_per_replica=8,
                                                      tensor_parallel_size=8, replicas=1))))
    first = observation(md(spec), config=ModelConfig(config=config))
    decision = decide(first, policy)
    probe = decision.desired[0]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] > 6000  # ~680 GB at 100 MiB/s
    status = assess(first, decision, ActOutcome(Check("True", "Applied", "")), "change",
                    policy).status
    assert status["plan"]["modelBytes"] > 600 * 10**9

    pinned = decide(observation(md(spec, status=status)), policy)  # no config this time
    assert pinned.desired == decision.desired
