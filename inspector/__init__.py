"""inspector: industrial visual inspection. Fit on good parts, calibrate, export to ONNX, watch a line."""

import os

# OpenCV reads this once, when cv2 is first imported: set it before any module imports cv2, so a
# 20000x20000 image is refused instead of decoded into gigabytes.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))
# Waiting OpenMP threads sleep instead of spinning: on a small shared box spinning torch threads
# slowed a fit ~30x while other processes ran.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# FFmpeg (under OpenCV's cameras) prints a raw line of its own on every failed open of a stream, read once per
# process: fatal ones only; the camera source says each outage in one line of its own.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
