"""Measure a detector artifact in a fresh process: resident bytes added by loading it, P50 ms per batch size.

A separate module (run as ``python -m shoal.trace.detector_measure``) so the figures are
not polluted by the exporting process's memory; inputs are [B, 3, S, S] images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shoal.trace.measure import measure_artifact


def measure(artifact: Path, size: int, batch_sizes: list[int], threads: int, device: str = "cpu",
            min_runs: int = 5, max_runs: int = 20, budget_s: float = 3.0) -> dict[str, Any]:
    """A detector: random [B, 3, size, size] images in [0, 1]."""
    import torch

    def make_inputs(bs: int, generator: Any) -> tuple:
        return (torch.rand(bs, 3, size, size, generator=generator),)

    return measure_artifact(artifact, make_inputs, batch_sizes, threads, device, min_runs, max_runs, budget_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = measure(args.artifact, args.image_size, [int(b) for b in args.batch_sizes.split(",")], args.threads,
                     args.device)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
