"""Write the dashboard JSON and the PrometheusRule into the repository's deploy/ folder.

    python -m shoal.deploy.monitoring [--check] [--root DIR]

``--check`` writes nothing and exits 1 when the committed files differ from what the code
builds (run it after changing dashboard.py or alerts.py, or let tests/test_monitoring.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoal.deploy.monitoring.export import REPO, exported_files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    ap.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = ap.parse_args()
    stale = []
    for rel, text in exported_files().items():
        path = args.root / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {rel}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m shoal.deploy.monitoring", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
