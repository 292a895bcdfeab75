"""Export a YOLO detector to TorchScript with Ultralytics. Runs inside .venv-video, never in shoal's venv.

Standalone on purpose (stdlib + ultralytics only): shoal's own dependencies are not
installed in that venv. Random-initialised models are built from an Ultralytics
config (``yolov8n.yaml``) with a fixed seed and saved as ``weights.pt`` first, so the
exported graph and ``weights.pt`` hold exactly the same (checkpoint-rounded) weights.
Writes into --out: weights.pt, model.torchscript, export.json.

    python shoal/trace/yolo_export.py --config yolov8n.yaml --seed 0 --imgsz 640 --out DIR
    python shoal/trace/yolo_export.py --weights my-detector.pt --imgsz 640 --out DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="Ultralytics model config, e.g. yolov8n.yaml (random initialisation)")
    source.add_argument("--weights", help="a trained Ultralytics .pt checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import ultralytics
    from ultralytics import YOLO

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    if args.config:
        torch.manual_seed(args.seed)
        YOLO(args.config).save(str(weights))
    else:
        src = Path(args.weights)
        if not src.is_file():
            print(f"weights file {src} does not exist", file=sys.stderr)
            return 2
        shutil.copyfile(src, weights)
    model = YOLO(str(weights))
    if model.task != "detect":
        print(f"{weights.name} is a {model.task} model; shoal serves detect models only", file=sys.stderr)
        return 2
    exported = Path(model.export(format="torchscript", imgsz=args.imgsz, device="cpu", verbose=False))
    shutil.move(str(exported), out / "model.torchscript")
    names = model.names
    info = {
        "names": [str(names[i]) for i in sorted(names)],
        "task": model.task,
        "imgsz": args.imgsz,
        "stride": int(max(model.model.stride)),
        "params": int(sum(p.numel() for p in model.model.parameters())),
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
    }
    (out / "export.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
