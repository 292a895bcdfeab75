#!/usr/bin/env bash
# Build stage: create the environment, install shoal, then trace the model catalog into the store.
#   ./build.sh [--models minilm-cls,bert-base-qa|all] [--processor cpu|gpu|inf1|inf2] [--store URI] [--images]
set -euo pipefail
cd "$(dirname "$0")"
source build/setup-env.sh
exec shoal build "$@"
