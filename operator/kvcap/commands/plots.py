"""PNG plots of simulation runs (matplotlib, the optional `kvcap[sim]` extra): one column per
policy; rows: replicas, KV tokens in use vs capacity, queue, TTFT over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvcap.sim.cluster import RunResult
from kvcap.sim.model import Slo


def write_plots(results: Sequence[RunResult], directory: str, slo: Slo) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    n_pools = len(results[0].pools) if results else 0
    for pi in range(n_pools):
        name = results[0].pools[pi].setup.name
        fig, axes = plt.subplots(4, len(results), figsize=(2.6 * len(results), 7.0),
                                 sharex=True, squeeze=False)
        for col, res in enumerate(results):
            tl = res.timelines[pi]
            minutes = [t / 60 for t in tl.t]
            ax = axes[0][col]
            ax.step(minutes, tl.replicas, where="post", label="replicas")
            ax.step(minutes, tl.ready, where="post", label="ready", alpha=0.7)
            ax.set_title(f"{res.policy} ({res.gpu_hours():.1f} GPU-h)", fontsize=9)
            ax = axes[1][col]
            ax.plot(minutes, [u / 1e6 for u in tl.kv_used], label="KV in use")
            ax.plot(minutes, [c / 1e6 for c in tl.kv_capacity], label="capacity", alpha=0.7)
            ax = axes[2][col]
            ax.plot(minutes, tl.waiting, color="tab:red")
            ax = axes[3][col]
            pts = [(r.first_token / 60, r.first_token - r.arrival) for r in res.requests
                   if r.pool == pi and r.first_token >= 0]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=1, alpha=0.3)
            ax.axhline(slo.ttft_s, color="grey", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_xlabel("minute")
        for row, label in enumerate(("replicas", "KV tokens (M)", "waiting", "TTFT (s)")):
            axes[row][0].set_ylabel(label)
        axes[0][0].legend(fontsize=7)
        axes[1][0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"simulate-{name}.png"
        fig.savefig(path, dpi=55)
        plt.close(fig)
        paths.append(str(path))
    return paths
