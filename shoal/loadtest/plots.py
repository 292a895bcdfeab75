"""The sweep's three plots (matplotlib, Agg backend: no display needed).

1. latency-throughput.png: served throughput vs P95 latency, one curve per batch
   size (points = client counts), the curve users pick an operating point from.
2. throughput-batch.png: throughput vs batch size, in-process and served, knee marked.
3. cost-batch.png: $ per million inferences vs batch size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shoal.loadtest.knee import knee  # noqa: E402

_STYLES = {"fp32": "-", "bf16": "--", "fp16": ":", "int8": "-."}


def _batch_axis(ax: plt.Axes, rows: list[dict]) -> None:
    """Log2 x axis labelled with the batch sizes themselves (1, 4, 16), not powers of two."""
    sizes = sorted({r["batch_size"] for r in rows if r["batch_size"] is not None})
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(b) for b in sizes])
        ax.minorticks_off()
    ax.set_xlabel("batch size (max sequences per forward, log scale)")


def _maybe_log_y(ax: plt.Axes, values: list[float]) -> None:
    """A log y axis when values span more than 30x, so small values stay readable."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > 30:
        ax.set_yscale("log")
        ax.set_ylabel(ax.get_ylabel() + " (log scale)")


def _series(rows: list[dict], path: str) -> dict[str, list[tuple[int, float]]]:
    """precision -> [(batch, best throughput)] for one path."""
    best: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["path"] == path and r["batch_size"] is not None and r["throughput"] > 0:
            d = best.setdefault(r["precision"], {})
            d[r["batch_size"]] = max(d.get(r["batch_size"], 0.0), r["throughput"])
    return {p: sorted(d.items()) for p, d in best.items()}


def plot_latency_throughput(rows: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    served = [r for r in rows if r["path"] == "served" and r["throughput"] > 0]
    groups: dict[tuple[str, object], list[dict]] = {}
    for r in served:
        groups.setdefault((r["precision"], r["batch_size"]), []).append(r)
    batches = sorted({b for _, b in groups if b is not None})
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(batches)}  # one colour per batch size
    for (prec, batch), pts in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        pts.sort(key=lambda r: r["clients"])
        label = f"batch {batch if batch is not None else '(server default)'}, {prec}"
        line, = ax.plot([p["throughput"] for p in pts], [p["p95_ms"] for p in pts], _STYLES.get(prec, "-"),
                        marker="o" if prec == "fp32" else "^", color=colors.get(batch), label=label)
        for p in pts:
            ax.annotate(f"{p['clients']}c", (p["throughput"], p["p95_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=line.get_color())
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("P95 latency (ms)")
    _maybe_log_y(ax, [r["p95_ms"] for r in served])
    ax.set_title("Served path: throughput vs P95 latency (labels: concurrent clients)")
    if groups:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no served points in this sweep", ha="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)
    path = out / "latency-throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput_batch(rows: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = {"inprocess": "in-process (no HTTP)", "served": "served (best over clients)"}
    for path_name, marker in (("inprocess", "s"), ("served", "o")):
        for prec, pts in sorted(_series(rows, path_name).items()):
            xs, ys = [b for b, _ in pts], [t for _, t in pts]
            line, = ax.plot(xs, ys, _STYLES.get(prec, "-"), marker=marker, label=f"{names[path_name]}, {prec}")
            k = knee(pts)
            if k is not None:
                ky = dict(pts)[k]
                ax.plot([k], [ky], marker="*", markersize=16, color=line.get_color(), linestyle="none")
                ax.annotate(f"knee: batch {k}", (k, ky), textcoords="offset points", xytext=(6, -14), fontsize=8,
                            color=line.get_color())
    _batch_axis(ax, rows)
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title("Throughput vs batch size (star = knee: first batch size reaching 90% of the best)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3, which="both")
    ax.set_ylim(bottom=0)
    path = out / "throughput-batch.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost_batch(doc: dict, out: Path) -> Path:
    rows = doc["rows"]
    price = doc.get("price")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    drew = False
    costs: list[float] = []
    if price:
        for path_name, marker in (("inprocess", "s"), ("served", "o")):
            for prec, pts in sorted(_series(rows, path_name).items()):
                xs = [b for b, _ in pts]
                ys = [price["per_hour"] / (t * 3600.0) * 1e6 for _, t in pts]
                costs += ys
                ax.plot(xs, ys, _STYLES.get(prec, "-"), marker=marker,
                        label=f"{'in-process' if path_name == 'inprocess' else 'served'}, {prec}")
                drew = True
        ax.set_title(f"$ per million inferences vs batch size\nprice: {price['basis']}", fontsize=10)
    ax.set_ylabel("cost (US$ per million inferences)")
    _batch_axis(ax, rows)
    if drew:
        ax.legend(fontsize=8)
        _maybe_log_y(ax, costs)
    else:
        ax.text(0.5, 0.5, "no price: pass --price-per-hour or --instance-type", ha="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3, which="both")
    path = out / "cost-batch.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(doc: dict, out: Path) -> list[Path]:
    rows = doc["rows"]
    return [plot_latency_throughput(rows, out), plot_throughput_batch(rows, out), plot_cost_batch(doc, out)]
