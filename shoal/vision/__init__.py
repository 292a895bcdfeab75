"""Image detection helpers shared by the trace stage, the detector handler and the capacity tool.

Plain torch, numpy and Pillow only: the server serves YOLO detectors without
Ultralytics, OpenCV or torchvision (torchvision's NMS is used when it imports).
Every step mirrors what Ultralytics' ``predict()`` does, so boxes match its own.
"""
