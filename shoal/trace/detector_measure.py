"""Measure a detector artifact in a fresh process: resident bytes added by loading it, latency per batch size.

A separate module (run as ``python -m shoal.trace.detector_measure``) so the figures are
not polluted by the exporting process's memory; inputs are [B, 3, S, S] images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.trace.measure import measure_artifact, run_cli
from shoal.trace.timing import Budget


def measure(artifact: Path, size: int, batch_sizes: list[int], threads: int, device: str = "cpu",
            budget: Budget = Budget()) -> dict[str, Any]:
    """A detector: random [B, 3, size, size] images in [0, 1]."""
    import torch

    def make_inputs(bs: int, generator: Any) -> tuple:
        return (torch.rand(bs, 3, size, size, generator=generator),)

    return measure_artifact(artifact, make_inputs, batch_sizes, threads, device, budget)


def main() -> None:
    run_cli(measure, "--image-size", __doc__)


if __name__ == "__main__":
    main()
