"""`shoal pack`: plan which model runs on which server of which instance, at least $/h."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shoal.errors import UsageError

HELP = """Pack models onto the fewest, cheapest instances under per-device memory and compute limits.

Reads each model's measured profile (memory, latency by batch size), assigns models to
device slots (one server process per GPU, NeuronCore or CPU slice) minimising total $/h,
and writes plan.json for `shoal deploy` and `shoal loadtest`. Prints, per candidate
instance type, what serving every model on that type alone would cost, then the plan
with its proven lower bound and gap.

\b
Examples:
  shoal pack --instances local --servers 3 -o plan.json
  shoal pack --instances inf1.6xlarge,g4dn.xlarge,g4dn.12xlarge --rps-per-model 2
  shoal pack --synthetic 3000 --seed 0 --instances inf1.6xlarge,g4dn.xlarge,g4dn.12xlarge
  shoal pack --previous plan.json -o plan.json      # after adding or removing models
  shoal pack --synthetic-family 1000 --instances c5.2xlarge [--no-families]
"""


def _batch(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--batch-size {text!r}: use 'auto' or a positive integer") from None
    if value < 1:
        raise UsageError("--batch-size must be at least 1")
    return value


def pack(
    instances: Annotated[str, typer.Option("--instances", "-i", help="comma-separated candidate instance types "
                                           "from the catalog; 'local' is this machine")] = "local",
    models: Annotated[Optional[str], typer.Option(help="comma-separated model ids in the store, or manifest "
                                                  "files (shoal.json, `shoal models list --json` output); "
                                                  "default: every model in the store")] = None,
    max_memory: Annotated[float, typer.Option(help="fraction of each device's memory models may use")] = 0.9,
    max_compute: Annotated[float, typer.Option(help="fraction of each device's time models may keep busy")] = 0.83,
    rps_per_model: Annotated[Optional[float], typer.Option(help="expected requests/s per model (default 1; "
                                                           "synthetic models carry their own)")] = None,
    batch_size: Annotated[str, typer.Option(help="batch size used for compute demand: 'auto' (what the "
                                            "batcher reaches at that rate) or a profiled size")] = "auto",
    servers: Annotated[Optional[int], typer.Option(help="server processes on the 'local' instance")] = None,
    synthetic: Annotated[Optional[int], typer.Option(help="pack N synthetic BERT-base-size profiles "
                                                     "instead of the store's models")] = None,
    synthetic_family: Annotated[Optional[int], typer.Option(help="pack N synthetic members of one bf16 MiniLM "
                                                            "family (shared base, small own tensors)")] = None,
    families: Annotated[bool, typer.Option("--families/--no-families", help="charge a family's shared bytes "
                                           "once per server (off: every member its full weights)")] = True,
    seed: Annotated[int, typer.Option(help="seed of --synthetic and --synthetic-family")] = 0,
    previous: Annotated[Optional[Path], typer.Option(help="re-plan: keep this plan's placements where "
                                                     "possible and report how many models moved")] = None,
    catalog: Annotated[Optional[Path], typer.Option(help="instance catalog YAML (default: the built-in one)")
                       ] = None,
    time_limit: Annotated[float, typer.Option(help="seconds the solver may spend")] = 5.0,
    base_port: Annotated[int, typer.Option(help="port of each instance's first server")] = 8080,
    store: Annotated[Optional[str], typer.Option("--store", help="store URI (default: SHOAL_STORE or "
                                                 "file://./store)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the plan")] = Path("plan.json"),
) -> None:
    from rich.console import Console

    from shoal.pack.report import print_outcome
    from shoal.pack.run import PackRequest, run_pack

    req = PackRequest(instances=instances.split(","), models=models, store=store, catalog=catalog,
                      max_memory=max_memory, max_compute=max_compute, rps_per_model=rps_per_model,
                      batch_size=_batch(batch_size), servers=servers, synthetic=synthetic,
                      synthetic_family=synthetic_family, families=families, seed=seed,
                      previous=previous, time_limit=time_limit, base_port=base_port)
    outcome = run_pack(req)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        outcome.plan.save(output)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # piped or logged: keep the table on one line per row
    print_outcome(console, outcome, output)


def register(app: typer.Typer) -> None:
    app.command("pack", help=HELP)(pack)
