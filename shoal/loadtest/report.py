"""What a run shows: a live line while it runs, a final table, and a JSON document.

Why JSON beside the table: later stages (sweeps, CI, docs) read the numbers; a
table is for people. Both come from the same ``Recorder.summary()``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.loadtest.stats import Recorder

PER_MODEL_ROWS = 15


class LiveProgress:
    """A one-line status (phase, elapsed, responses, current rate) refreshed at most 4x per second."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.live: Live | None = None
        self.t0 = time.monotonic()
        self.last = (self.t0, 0)
        self.rate = 0.0

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            self.live = Live(Text("starting"), console=self.console, auto_refresh=False, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, phase: str, ok: int, errors: int) -> None:
        now = time.monotonic()
        t_last, n_last = self.last
        if now - t_last >= 0.25:
            self.rate = (ok + errors - n_last) / (now - t_last)
            self.last = (now, ok + errors)
        if self.live is not None:
            self.live.update(Text(f"{phase:>10}  {now - self.t0:6.1f}s  ok {ok:>9,}  errors {errors:>6,}  "
                                  f"{self.rate:9,.0f} req/s"), refresh=True)


def _ms(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def summary_table(stages: list[Recorder], overall: Recorder | None, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("window", "offered/s", "requests", "ok", "errors", "req/s",
                "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "window" else "right")
    rows = list(stages) + ([overall] if overall is not None and len(stages) > 1 else [])
    for r in rows:
        lat = r.hist.summary_ms()
        table.add_row(r.label, f"{r.offered_rate:,.1f}" if r.offered_rate else "-", f"{r.total:,}", f"{r.ok:,}",
                      f"{r.error_count:,}", f"{r.throughput:,.1f}", _ms(lat["p50"]), _ms(lat["p90"]),
                      _ms(lat["p95"]), _ms(lat["p99"]), _ms(lat["max"]))
    return table


def errors_table(rec: Recorder) -> Table | None:
    if not rec.errors:
        return None
    table = Table(title="errors by kind", title_justify="left")
    for col in ("kind", "count", "share", "first message"):
        table.add_column(col)
    for kind, n in sorted(rec.errors.items(), key=lambda kv: -kv[1]):
        table.add_row(kind, f"{n:,}", f"{n / rec.total:.2%}", rec.error_examples.get(kind, "")[:100])
    return table


def per_model_table(rec: Recorder) -> Table | None:
    if len(rec.models) <= 1:
        return None
    ranked = sorted(rec.models.items(), key=lambda kv: -(kv[1].ok + kv[1].errors))
    more = len(ranked) - PER_MODEL_ROWS
    title = "per model" + (f" (busiest {PER_MODEL_ROWS} of {len(ranked)}; all in --json)" if more > 0 else "")
    table = Table(title=title, title_justify="left")
    for col in ("model", "ok", "errors", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for mid, s in ranked[:PER_MODEL_ROWS]:
        table.add_row(mid, f"{s.ok:,}", f"{s.errors:,}", _ms(s.hist.percentile_ms(50)), _ms(s.hist.percentile_ms(95)))
    return table


def print_report(console: Console, stages: list[Recorder], overall: Recorder, title: str,
                 cost: dict | None, ceiling: dict | None, warnings: list[str]) -> None:
    console.print(summary_table(stages, overall, title))
    for t in (errors_table(overall), per_model_table(overall)):
        if t is not None:
            console.print(t)
    if cost and cost.get("basis"):
        line = (f"cost: ${cost['usd_per_million']:.4f} per million inferences, "
                f"${cost['usd_per_model_hour']:.6f} per model-hour" if cost.get("usd_per_million") is not None
                else "cost: no successful responses to price")
        if cost.get("usd_per_camera_month") is not None:
            line += f", ${cost['usd_per_camera_month']:.2f} per camera-month at {cost['fps']:g} fps"
        console.print(f"{line}  [dim]({cost['basis']})[/dim]", highlight=False)
    if ceiling and ceiling.get("rps"):
        console.print(f"generator ceiling: {ceiling['rps']:,.0f} req/s ({ceiling['method']}); "
                      f"this run reached {overall.throughput / ceiling['rps']:.1%} of it", highlight=False)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def build_document(meta: dict, stages: list[Recorder], overall: Recorder, cost: dict | None,
                   ceiling: dict | None, warnings: list[str]) -> dict:
    doc = dict(meta)
    doc.update(overall.summary())
    doc["stages"] = [s.summary() for s in stages] if len(stages) > 1 else []
    doc["cost"] = cost
    doc["generator_ceiling"] = ceiling
    doc["warnings"] = warnings
    doc["latency_histogram"] = overall.hist.to_dict()
    return doc


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
