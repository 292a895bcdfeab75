#!/usr/bin/env bash
# Runs the test suite, installing what it needs first. Extra arguments go to pytest.
#   ./test.sh                 # the suite (a few minutes)
#   SHOAL_LONG_TESTS=1 ./test.sh   # also the long reliability variants
set -euo pipefail
cd "$(dirname "$0")"
source build/setup-env.sh
bash build/setup-video-env.sh > /dev/null  # .venv-video (Ultralytics) for the detector acceptance test; ~3 min once
exec python -m pytest "$@"
