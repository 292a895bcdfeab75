#!/usr/bin/env bash
# Creates .venv-video (if missing): Ultralytics + torchvision for exporting YOLO detectors.
# Why a second venv: PyPI's torchvision does not import beside the main venv's torch 2.13.0, and
# ultralytics needs it. Only the trace stage (export) and the acceptance test use this venv; the
# server never does. Safe to run again: a stamp file records the pins it installed.
#   build/setup-video-env.sh            # create or update; prints the venv's python on the last line
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SHOAL_VIDEO_VENV:-$here/.venv-video}"
# torch/torchvision wheels are the ones this machine keeps on disk; ultralytics is pinned so exports
# (and the acceptance test against its predict()) do not drift.
pins="torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190"
stamp="$venv/.shoal-video-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "shoal: creating the video environment in ${venv#$here/} (about 6 GB: torch's CUDA build, run on CPU)" >&2
  python3 -m venv "$venv"
fi
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; }  # local index noise
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $pins 2>&1 | quiet
cfg="$(mktemp -d)"  # Ultralytics writes a settings file on import: keep it out of $HOME
YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$cfg" "$venv/bin/python" - >&2 <<'EOF'
import torch, torchvision, ultralytics  # fail here, not in the middle of a trace
print(f"shoal: video env ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"ultralytics {ultralytics.__version__}")
EOF
rm -rf "$cfg"
echo "$pins" > "$stamp"
echo "shoal: video environment installed in $(( $(date +%s) - start )) s" >&2
echo "$venv/bin/python"
