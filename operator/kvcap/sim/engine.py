"""One vLLM V1 replica: paged KV blocks, continuous batching with chunked prefill, preemption by
recompute, prefix caching (pure; no I/O).

The scheduler follows vLLM V1's `Scheduler.schedule()` (vllm/v1/core/sched/scheduler.py):

* one token budget per step (`max_num_batched_tokens`) shared by all requests; running requests are
  served first, in order, each with all its uncomputed tokens (a decode is 1 token, a prefill a
  chunk of at most the remaining budget);
* a running request whose blocks cannot be allocated preempts the newest running request (the
  tail of the running list) by recompute: its blocks are freed, its progress reset, and it goes back
  to the front of the waiting queue; `vllm:num_preemptions_total` counts it;
* waiting requests are admitted FCFS only when no preemption happened in the step, while the budget
  lasts, `max_num_seqs` allows, and the blocks of their first chunk can be allocated;
* a request's KV covers prompt + generated tokens; a finished request frees its blocks and its
  prompt's prefix blocks stay in the prefix cache (LRU), counted as free, evicted when needed;
* prefix caching: at admission the longest leading run of the request's prefix-block hashes that is
  cached on this replica is not recomputed (vLLM keeps full blocks by content hash).

Simplifications (docs/simulator.md): cached prefix blocks are not shared between running requests
(each request's KV is counted in full), so KV use is slightly over-counted for requests that share a
prefix at the same moment; no speculative decoding, no async scheduling.

Speed: a stretch of pure decode steps in which nothing can be admitted, no request finishes and no
block allocation can fail is advanced in one go (the step times are still summed one by one).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kvcap.capacity.latency import StepModel, pairs


@dataclass(slots=True)
class Req:
    """A request inside the simulator (mutable)."""

    id: int
    arrival: float
    prompt: int
    output: int  # >= 1
    hashes: tuple[int, ...]
    pool: int = 0
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0  # output tokens produced
    blocks: int = 0
    first_token: float = -1.0
    finish: float = -1.0
    preemptions: int = 0
    prefix_hit_tokens: int = 0
    looked_up: bool = False

    @property
    def num_tokens(self) -> int:
        return self.prompt + self.generated


@dataclass(frozen=True, slots=True)
class EngineConfig:
    total_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    hash_block_tokens: int = 512  # tokens per prefix hash id


@dataclass(slots=True)
class Counters:
    """Monotonic counters, as vLLM exports them."""

    preemptions: int = 0
    requests: int = 0  # arrived at this replica
    finished: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0  # tokens looked up
    prefix_hits: int = 0  # tokens found


@dataclass(slots=True)
class Replica:
    cfg: EngineConfig
    model: StepModel
    created: float
    ready_at: float
    clock: float = 0.0
    draining: bool = False
    removed_at: float = -1.0
    capacity_waiting: int = 0  # left waiting by the last schedule for lack of blocks or seats
    used_blocks: int = 0
    peak_blocks: int = 0
    waiting: deque[Req] = field(default_factory=deque)
    running: list[Req] = field(default_factory=list)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)
    counters: Counters = field(default_factory=Counters)

    # --- what the metrics endpoint shows ---

    @property
    def kv_usage(self) -> float:
        """`vllm:kv_cache_usage_perc`: 1 - free / total (cached, unreferenced = free)."""
        return self.used_blocks / self.cfg.total_blocks

    @property
    def kv_capacity_tokens(self) -> int:
        return self.cfg.total_blocks * self.cfg.block_size

    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, req: Req) -> None:
        self.waiting.append(req)
        self.counters.requests += 1

    # --- time ---

    def advance(self, until: float, done: list[Req]) -> None:
        """Run steps until the replica's clock reaches `until` (the last step may end after it).
        Finished requests are appended to `done`."""
        if self.clock < self.ready_at:
            self.clock = min(until, self.ready_at)
        while self.clock < until:
            if not self.running and not self.waiting:
                self.clock = until
                return
            if not self._fast_forward(until, done) and not self._step(done):
                self.clock = until  # nothing can run until something arrives or is removed
                return

    # --- one step ---

    def _free_blocks(self) -> int:
        return self.cfg.total_blocks - self.used_blocks

    def _blocks_for(self, tokens: int) -> int:
        bs = self.cfg.block_size
        return -(-tokens // bs)

    def _preempt(self, victim: Req) -> None:
        self.used_blocks -= victim.blocks
        victim.blocks = 0
        victim.computed = 0
        victim.looked_up = False
        victim.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(victim)

    def _lookup_prefix(self, req: Req) -> None:
        """Prefix-cache lookup at admission: skip the leading cached hash blocks."""
        req.looked_up = True
        if not req.hashes:
            return
        self._trim_cache()
        hit = 0
        for h in req.hashes:
            if h in self.cache:
                self.cache.move_to_end(h)
                hit += 1
            else:
                break
        tokens = min(hit * self.cfg.hash_block_tokens, req.num_tokens - 1)
        self.counters.prefix_queries += req.prompt
        self.counters.prefix_hits += max(0, tokens)
        req.prefix_hit_tokens = max(req.prefix_hit_tokens, tokens)
        req.computed = max(0, tokens)
        for h in req.hashes:  # the prompt's blocks are cached as they are computed
            self.cache[h] = None
            self.cache.move_to_end(h)

    def _trim_cache(self) -> None:
        room = self._free_blocks() * self.cfg.block_size // self.cfg.hash_block_tokens
        while len(self.cache) > room:
            self.cache.popitem(last=False)

    def _step(self, done: list[Req]) -> bool:
        cfg = self.cfg
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Req, int]] = []
        preempted = False
        i = 0
        running = self.running
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.num_tokens - r.computed, budget)
            if n <= 0:
                i += 1
                continue
            need = self._blocks_for(r.computed + n) - r.blocks
            while need > self._free_blocks():
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is r:
                    break
            else:
                r.blocks += need
                self.used_blocks += need
                scheduled.append((r, n))
                budget -= n
                i += 1
                continue
            break  # r itself was preempted
        if not preempted:
            while self.waiting and budget > 0:
                if len(running) >= cfg.max_num_seqs:
                    break
                r = self.waiting[0]
                if not r.looked_up:
                    self._lookup_prefix(r)
                n = min(r.num_tokens - r.computed, budget)
                need = self._blocks_for(r.computed + n)
                if need > self._free_blocks():
                    break
                self.waiting.popleft()
                r.blocks = need
                self.used_blocks += need
                running.append(r)
                scheduled.append((r, n))
                budget -= n
        # Whatever the schedule left waiting waits for engine capacity: KV blocks, seats
        # (max_num_seqs) or the token budget (vLLM's num_requests_waiting_by_reason "capacity").
        self.capacity_waiting = len(self.waiting)
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        if not scheduled:
            return False
        prefill_tokens = dec = dec_ctx = 0
        prefill_pairs = 0.0
        for r, n in scheduled:
            if n == 1 and r.computed == r.num_tokens - 1 and r.generated > 0:
                dec += 1
                dec_ctx += r.computed
            else:
                prefill_tokens += n
                prefill_pairs += pairs(r.computed, n)
        self.clock += self.model.step_time(prefill_tokens, prefill_pairs, dec, dec_ctx)
        now = self.clock
        finished = False
        c = self.counters
        for r, n in scheduled:
            if r.generated == 0 or r.computed < r.prompt:
                c.prompt_tokens += min(n, max(0, r.prompt - r.computed))
            r.computed += n
            if r.computed == r.num_tokens:
                r.generated += 1
                c.generation_tokens += 1
                if r.first_token < 0:
                    r.first_token = now
                if r.generated >= r.output:
                    r.finish = now
                    finished = True
        if finished:
            self._retire_finished(done)
        return True

    def _retire_finished(self, done: list[Req]) -> None:
        """Free the blocks of every running request that has finished and move it to `done`."""
        keep = []
        for r in self.running:
            if r.finish >= 0:
                self.used_blocks -= r.blocks
                r.blocks = 0
                self.counters.finished += 1
                done.append(r)
            else:
                keep.append(r)
        self.running = keep

    def _fast_forward(self, until: float, done: list[Req]) -> bool:
        """Advance k > 1 pure-decode steps at once when nothing else can happen in them."""
        running = self.running
        if len(running) == 0:
            return False
        k = 1 << 30
        ctx = 0
        for r in running:
            if r.num_tokens - r.computed != 1 or r.generated == 0:
                return False  # a prefill is in progress
            left = r.output - r.generated
            if left < k:
                k = left
            ctx += r.computed
        if self.waiting and len(running) < self.cfg.max_num_seqs:
            w = self.waiting[0]
            first = w.num_tokens if not w.looked_up else w.num_tokens - w.computed
            if self._blocks_for(min(first, self.cfg.max_num_batched_tokens)) <= self._free_blocks():
                return False  # something may be admitted
        if len(running) > self.cfg.max_num_batched_tokens:
            return False
        # Blocks: the largest j <= k such that every request can grow by j tokens.
        free = self._free_blocks()
        bs = self.cfg.block_size

        def extra(j: int) -> int:
            return sum(-(-(r.computed + j) // bs) - r.blocks for r in running)

        if extra(k) > free:
            lo, hi = 0, k
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if extra(mid) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        if k < 2:
            return False
        n = len(running)
        model = self.model
        t = self.clock
        steps = 0
        while steps < k and t < until:
            t += model.step_time(0, 0.0, n, ctx + n * steps)
            steps += 1
        if steps < 2:
            return False
        self.clock = t
        c = self.counters
        c.generation_tokens += n * steps
        finished = False
        for r in running:
            r.computed += steps
            r.generated += steps
            nb = -(-r.computed // bs)
            self.used_blocks += nb - r.blocks
            r.blocks = nb
            if r.generated >= r.output:
                r.finish = t
                finished = True
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        if finished:
            self._retire_finished(done)
        return True
