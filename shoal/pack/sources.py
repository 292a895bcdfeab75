"""Where the models to pack come from: the store, manifest files, or the synthetic generator."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from shoal.errors import ShoalError, UsageError
from shoal.ids import check_model_id
from shoal.store.manifest import MANIFEST_NAME, Manifest

DEFAULT_RPS = 1.0


def _manifests_from_file(path: Path) -> list[Manifest]:
    """A ``shoal.json``, a folder holding one, or a JSON list (``shoal models list --json``)."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not a JSON manifest file: {str(exc).splitlines()[0]}") from None
    items = data if isinstance(data, list) else [data]
    out = []
    for k, item in enumerate(items):
        try:
            out.append(Manifest.model_validate(item))
        except ValidationError as exc:
            where = f"{path}[{k}]" if isinstance(data, list) else str(path)
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "manifest"
            raise UsageError(f"{where} is not a valid model manifest: {field}: {err['msg']}") from None
    return out


def load_models(models: str | None, store_uri: str | None) -> tuple[list[Manifest], str]:
    """Manifests named by ``--models`` (ids and/or files), or every model in the store.

    Returns the manifests and the store URI the plan should record.
    """
    from shoal.config import load_settings
    from shoal.store import store_from_settings

    store = None

    def get_store():  # noqa: ANN202 - a ModelStore, opened only when an id needs it
        nonlocal store
        if store is None:
            store = store_from_settings(load_settings(store=store_uri))
        return store

    out: list[Manifest] = []
    if models is None:
        s = get_store()
        out = s.manifests()
        if not out:
            raise UsageError(f"no models to pack: the store {s.uri} is empty; run ./build.sh or `shoal trace`, "
                             "name --models, or try --synthetic 100")
    else:
        tokens = [t.strip() for t in models.split(",") if t.strip()]
        if not tokens:
            raise UsageError("--models is empty: give model ids or a manifest file")
        for token in tokens:
            path = Path(token)
            if path.exists() or token.endswith(".json"):
                out += _manifests_from_file(path)
            else:
                check_model_id(token)
                try:
                    out.append(get_store().read_manifest(token))
                except ShoalError as exc:
                    raise UsageError(str(exc)) from None
    seen: set[str] = set()
    for m in out:
        if m.id in seen:
            raise UsageError(f"model {m.id} is named twice in --models")
        seen.add(m.id)
    return out, load_settings(store=store_uri).store
