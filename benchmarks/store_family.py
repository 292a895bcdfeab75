"""Family store: what thousands of members of one base cost in a content-addressed store, and to make.

One command from a fresh clone (after ./build.sh, which traces minilm-cls into ./store):

    .venv/bin/python benchmarks/store_family.py --count 10000

It pushes the base into a scratch store (a temporary folder beside ``--scratch``, removed at the end
unless ``--keep``), synthesises ``count`` members of it in-process (``--lora`` of them LoRA adapters,
rank 8 on query and value, `shoal/family/synth_lora.py`; the rest partial fine-tunes, `shoal models
synth`: new vectors and head over the base's matrices), and prints:
  * members synthesised and the synth time per member (each kind, and overall);
  * the store's bytes on disk (`du`: allocated blocks, a hard-linked blob counted once), of which the
    manifests, and the blobs' count;
  * the base's bytes (all its files) plus the sum of the members' own tensor bytes, and the ratio of
    the store's bytes to that (the issue's bound: <= 1 plus the manifests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server_common import machine  # noqa: E402


def du_bytes(path: Path) -> int:
    """`du -s`: allocated bytes, every inode once however many links it has."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def manifest_bytes(root: Path) -> int:
    total = 0
    for folder in root.iterdir():
        if not folder.name.startswith("."):
            st = (folder / "shoal.json").stat()
            total += st.st_blocks * 512
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-store", default="file://./store", help="store holding the traced base")
    ap.add_argument("--base", default="minilm-cls")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--lora", type=float, default=0.5, help="fraction of members that are LoRA adapters")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()), help="parent of the scratch store")
    ap.add_argument("--keep", action="store_true", help="keep the scratch store (its path is printed)")
    args = ap.parse_args()

    from shoal.family.shared_base import OWN_FILE
    from shoal.family.synth_lora import synth_adapters
    from shoal.store import open_store
    from shoal.store.local import LocalStore
    from shoal.trace.synth import synth_models

    src = open_store(args.base_store)
    base = src.read_manifest(args.base)
    lora = int(args.count * args.lora)
    partial = args.count - lora
    per_member = 600_000 + 40_000  # own tensors of a bf16 MiniLM member, its manifest, rounded up
    free = shutil.disk_usage(args.scratch).free
    need = base.total_bytes + args.count * per_member * 2
    if free < need + (5 << 30):
        sys.exit(f"{args.count} members need about {need / 1e9:.1f} GB beside 5 GB kept free; "
                 f"{free / 1e9:.1f} GB are free under {args.scratch}: run a smaller --count")
    root = Path(tempfile.mkdtemp(prefix="shoal-store-family-", dir=args.scratch))
    try:
        store = LocalStore(root)
        store.push(src.fetch(args.base), base)
        t0 = time.perf_counter()
        if lora:
            synth_adapters(store, args.base, lora, prefix=f"{args.base}-l")
        t1 = time.perf_counter()
        if partial:
            synth_models(store, args.base, partial, prefix=f"{args.base}-p")
        t2 = time.perf_counter()
        ids = [i for i in store.list_ids() if i != args.base]
        own = 0
        for model_id in ids:
            m = store.read_manifest(model_id)
            own += sum(t.nbytes for t in m.tensors.values() if t.file == OWN_FILE)  # what the member brings
        disk = du_bytes(root)
        manifests = manifest_bytes(root)
        reference = base.total_bytes + own
        figures = {
            "members": len(ids), "lora": lora, "partial": partial,
            "synth_ms_per_member": round((t2 - t0) * 1000 / max(len(ids), 1), 2),
            "synth_ms_per_lora": round((t1 - t0) * 1000 / lora, 2) if lora else None,
            "synth_ms_per_partial": round((t2 - t1) * 1000 / partial, 2) if partial else None,
            "store_bytes_on_disk": disk, "manifest_bytes_on_disk": manifests, "blobs": len(store.blobs.digests()),
            "base_bytes": base.total_bytes, "members_own_tensor_bytes": own, "base_plus_own_bytes": reference,
            "ratio_store_to_base_plus_own": round(disk / reference, 3),
            "ratio_without_manifests": round((disk - manifests) / reference, 3),
            "full_copies_would_be_bytes": base.total_bytes * (len(ids) + 1),
        }
        print(machine())
        print(f"members synthesised         {len(ids)} ({lora} LoRA, {partial} partial fine-tunes)")
        print(f"synth ms per member         {figures['synth_ms_per_member']} (LoRA {figures['synth_ms_per_lora']}, "
              f"partial {figures['synth_ms_per_partial']})")
        print(f"store bytes on disk (du)    {disk / 2**20:,.1f} MiB ({manifests / 2**20:,.1f} MiB of it manifests; "
              f"{figures['blobs']} blobs)")
        print(f"base + members' own tensors {reference / 2**20:,.1f} MiB (base {base.total_bytes / 2**20:.1f} MiB, "
              f"own {own / 2**20:,.1f} MiB)")
        print(f"ratio                       {figures['ratio_store_to_base_plus_own']} "
              f"({figures['ratio_without_manifests']} without the manifests)")
        print(f"full copies would be        {figures['full_copies_would_be_bytes'] / 2**30:,.1f} GiB")
        print(json.dumps(figures))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
