"""The Ultralytics side of the acceptance test. Runs inside .venv-video (stdlib + ultralytics only).

    weights   --seed S --image PNG... --out W.pt  random YOLOv8n whose detections are confident and varied
    predict   --weights W --case IMG:CONF... --out J.json   Ultralytics' own predict(), as JSON per case
    letterbox --image IMG... --out-dir D         Ultralytics' LetterBox (OpenCV resize), RGB uint8, D/IMG.npy

Why ``weights`` recalibrates BatchNorm: a freshly initialised YOLOv8n outputs nearly the
same box and a ~1e-4 score at every anchor, so NMS would choose between ties. Setting
each BatchNorm's statistics from a forward pass over the test images (plus noise) keeps
the conv weights random but gives well-separated scores and boxes; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys


def make_weights(seed: int, images: list[str], bias: float, out: str) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model
    x = torch.full((len(images), 3, 640, 640), 114 / 255)
    for i, image in enumerate(images):
        rgb = np.asarray(Image.open(image).convert("RGB").resize((640, 384)), dtype=np.float32) / 255
        x[i, :, 128:512] = torch.from_numpy(rgb).permute(2, 0, 1)
    batch = torch.cat([x, torch.rand(2, 3, 640, 640, generator=torch.Generator().manual_seed(seed))])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over this one calibration batch
    net.train()
    with torch.no_grad():
        net(batch)
    net.eval()
    with torch.no_grad():
        for branch in net.model[-1].cv3:  # class logits centred low, so only distinct peaks pass 0.25
            branch[-1].bias.fill_(bias)
    yolo.save(out)


def predict(weights: str, cases: list[str], iou: float, imgsz: int, out: str) -> None:
    from ultralytics import YOLO

    data = {}
    for case in cases:
        image, _, conf = case.rpartition(":")
        model = YOLO(weights, task="detect")  # fresh per case: the predictor keeps its first arguments
        # rect=False: a square imgsz x imgsz letterbox, the input shape a TorchScript export (and shoal) uses.
        result = model.predict(image, conf=float(conf), iou=iou, imgsz=imgsz, rect=False, device="cpu",
                               verbose=False)[0]
        boxes = result.boxes
        data[case] = {"boxes": boxes.xyxy.tolist(), "classes": boxes.cls.int().tolist(),
                      "scores": boxes.conf.tolist(), "names": [result.names[int(c)] for c in boxes.cls.tolist()],
                      "shape": list(result.orig_shape)}
    with open(out, "w") as fh:
        json.dump(data, fh)


def letterbox(images: list[str], imgsz: int, out_dir: str) -> None:
    from pathlib import Path

    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox

    for image in images:
        rgb = LetterBox(imgsz, auto=False)(image=cv2.imread(image))[..., ::-1]
        np.save(Path(out_dir) / f"{Path(image).name}.npy", np.ascontiguousarray(rgb))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--image", nargs="+", required=True, help="images to calibrate BatchNorm on")
    w.add_argument("--bias", type=float, default=-5.0)
    w.add_argument("--out", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--weights", required=True)
    p.add_argument("--case", nargs="+", required=True, help="IMAGE:CONF")
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--out", required=True)
    lb = sub.add_parser("letterbox")
    lb.add_argument("--image", nargs="+", required=True)
    lb.add_argument("--imgsz", type=int, default=640)
    lb.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    if args.cmd == "weights":
        make_weights(args.seed, args.image, args.bias, args.out)
    elif args.cmd == "predict":
        predict(args.weights, args.case, args.iou, args.imgsz, args.out)
    else:
        letterbox(args.image, args.imgsz, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
