"""`shoal models ...`: list, show, push, pull, rm (`models synth` is the trace stage's, registered by it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shoal.config import load_settings
from shoal.errors import UsageError
from shoal.store import store_from_settings
from shoal.store.manifest import MANIFEST_NAME, Manifest

models_app = typer.Typer(help="Inspect and move models in the model store.", no_args_is_help=True)
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="store URI (default: SHOAL_STORE or file://./store)")]


def _store(uri: str | None):  # noqa: ANN202 - returns a ModelStore
    return store_from_settings(load_settings(store=uri))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _gate_summary(m: Manifest) -> str:
    """The accuracy gate's figures for the stored precision, then which candidates it refused."""
    gate = m.profile.gate if m.profile else {}
    figures = gate.get(m.precision)
    if figures is None:
        return "-"
    if m.precision == "fp32":
        shown = "reference"
    elif figures.max_probability_change is not None:
        shown = f"\u0394p {figures.max_probability_change:.4f}"
    else:
        shown = f"cos {figures.min_cosine:.5f}" if figures.min_cosine is not None else "?"
    if figures.argmax_agreement is not None and m.precision != "fp32" and m.task != "embedding":
        shown += f", argmax {figures.argmax_agreement:.1%}"
    refused = [name for name, f in gate.items() if not f.accepted]
    return shown + (f"; refused {', '.join(refused)}" if refused else "")


@models_app.command("list")
def list_models(store: StoreOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models in the store with their measured profiles."""
    s = _store(store)
    manifests = s.manifests()
    if as_json:
        typer.echo(json.dumps([m.model_dump() for m in manifests], indent=2))
        return
    from shoal.family.listing import Totals, model_bytes, short_key

    table = Table(title=f"models in {s.uri}")
    for col in ("id", "task", "precision", "weights", "family", "own", "shared", "resident", "gate vs fp32",
                "latency p50 ms by batch"):
        table.add_column(col, no_wrap=True)
    sums = Totals()
    for m in manifests:
        p = m.profile
        lat = ", ".join(f"b{b}: {ms:.1f}" for b, ms in sorted(p.latency_ms_p50.items())) if p else "-"
        if p and p.unstable:
            lat += " (unstable: see `shoal models show`)"
        weights = m.weight_bytes or (p.param_bytes if p else 0)
        b = model_bytes(m)
        sums.add(b)
        table.add_row(m.id, m.task, m.precision, _fmt_bytes(weights) if weights else "-",
                      short_key(b.family) or "-", _fmt_bytes(b.own_bytes) if b.own_bytes else "-",
                      _fmt_bytes(b.shared_bytes) if b.family else "-",
                      _fmt_bytes(p.resident_bytes) if p else "-", _gate_summary(m), lat)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    if manifests:
        fams = ", ".join(f"{short_key(f.key)} ({f.members} model{'s' if f.members > 1 else ''}, "
                         f"{_fmt_bytes(f.shared_bytes)} shared)" for f in sums.families.values())
        typer.echo(f"total: {len(manifests)} models, {_fmt_bytes(sums.total_bytes)} of weights with each family's "
                   f"shared bytes once ({_fmt_bytes(sums.own_bytes)} own + {_fmt_bytes(sums.shared_bytes)} shared)"
                   + (f"; families: {fams}" if fams else ""))
    if not manifests:
        typer.echo("no models yet: run ./build.sh or `shoal trace models/minilm-embed.yaml`")


@models_app.command("show")
def show(model_id: str, store: StoreOpt = None) -> None:
    """Print one model's manifest."""
    typer.echo(_store(store).read_manifest(model_id).model_dump_json(indent=2))


@models_app.command("push")
def push(folder: Path, store: StoreOpt = None) -> None:
    """Copy a model folder (files + shoal.json) into the store, verifying every sha256."""
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        raise UsageError(f"{folder} has no {MANIFEST_NAME}: push a folder written by `shoal trace` or `pull`") from None
    _store(store).push(folder, manifest)
    typer.echo(f"pushed {manifest.id}")


@models_app.command("pull")
def pull(model_id: str, dest: Path, store: StoreOpt = None) -> None:
    """Copy a model out of the store into DEST/<id>, verified."""
    import shutil

    src = _store(store).fetch(model_id)
    out = dest / model_id
    if out.exists():
        raise UsageError(f"{out} already exists")
    shutil.copytree(src, out)
    typer.echo(f"pulled {model_id} to {out}")


@models_app.command("rm")
def rm(model_ids: list[str], store: StoreOpt = None) -> None:
    """Remove models from the store."""
    s = _store(store)
    for model_id in model_ids:
        s.remove(model_id)
        typer.echo(f"removed {model_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
