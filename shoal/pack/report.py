"""What ``shoal pack`` prints: the reference's comparison table, then the plan and its proof."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shoal.pack.run import PackOutcome


def _money(x: float | None, decimals: int = 3) -> str:
    return "-" if x is None else f"${x:,.{decimals}f}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def table(outcome: PackOutcome) -> Table:
    plan = outcome.plan
    t = Table(title="every model on one instance type, and the plan", title_justify="left")
    cols = [("model", "left"), ("instance type", "left"), ("instances", "right"), ("models per instance", "right"),
            ("$/instance-hour", "right"), ("$/model-hour", "right"), ("note", "left")]
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=col != "note")  # type: ignore[arg-type]
    for r in outcome.rows:
        t.add_row(outcome.label, r.instance_type, str(r.instances) if r.instances else "-",
                  f"{r.models_per_instance:.1f}" if r.models_per_instance else "-", _money(r.price_per_hour),
                  _money(r.price_per_model_hour, 5), r.note)
    n_inst = len(plan.instances)
    mix = Counter(i.type for i in plan.instances)
    what = " + ".join(f"{k} x {v}" for v, k in sorted(((v, k) for k, v in mix.items()), reverse=True))
    t.add_row(f"[bold]{outcome.label}[/bold]", f"[bold]plan: {what}[/bold]", f"[bold]{n_inst}[/bold]",
              f"[bold]{len(plan.routing) / max(1, n_inst):.1f}[/bold]",
              f"[bold]{_money(plan.cost_per_hour / max(1, n_inst))}[/bold]",
              f"[bold]{_money(plan.price_per_model_hour, 5)}[/bold]", "mixed types" if len(mix) > 1 else "")
    return t


def _bytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def families_table(outcome: PackOutcome) -> Table | None:
    """One row per family: shared bytes counted once per server that holds a member."""
    fams = outcome.plan.families
    if not fams:
        return None
    t = Table(title="families: shared bytes held once per server", title_justify="left")
    for col, just in (("family", "left"), ("members", "right"), ("shared", "right"), ("servers", "right"),
                      ("shared bytes planned", "right"), ("on", "left")):
        t.add_column(col, justify=just, no_wrap=col != "on")  # type: ignore[arg-type]
    for f in fams:
        on = ", ".join(f.servers[:3]) + (f", ... ({len(f.servers) - 3} more)" if len(f.servers) > 3 else "")
        t.add_row(f.key[:8], str(f.members), _bytes(f.shared_bytes), str(len(f.servers)),
                  _bytes(f.shared_bytes * len(f.servers)), on)
    return t


def print_outcome(console: Console, outcome: PackOutcome, output: Path) -> None:
    plan = outcome.plan
    rep = plan.solver
    console.print(table(outcome))
    fams = families_table(outcome)
    if fams is not None:
        console.print(fams)
    console.print(f"plan: {_n(len(plan.routing), 'model')} on {_n(len(plan.servers), 'server')} of "
                  f"{_n(len(plan.instances), 'instance')}, {_money(plan.cost_per_hour)}/h, "
                  f"{_money(plan.price_per_model_hour, 5)} per model-hour", highlight=False)
    if rep is not None:
        proof = "optimal (proven)" if rep.optimal else f"gap {rep.gap:.2%} to the lower bound"
        console.print(f"solver: {rep.method}; {rep.seconds:.2f} s; lower bound {_money(rep.lower_bound)}/h; "
                      f"{proof}", highlight=False)
    if outcome.previous is not None and rep is not None:
        fresh = f"; a fresh plan would cost {_money(outcome.fresh_cost)}/h" if outcome.fresh_cost is not None else ""
        console.print(f"re-plan: {_n(rep.moved_models or 0, 'model')} moved, {outcome.added} added, "
                      f"{outcome.removed} removed"
                      f"{fresh}", highlight=False)
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    shown = ", ".join(f"{s.name} :{s.port} ({_n(len(s.models), 'model')})" for s in plan.servers[:4])
    more = f", ... ({len(plan.servers) - 4} more)" if len(plan.servers) > 4 else ""
    console.print(f"wrote {output}: {shown}{more}", highlight=False, soft_wrap=True)
