#!/usr/bin/env bash
# Deploy stage: run the model servers.
#   ./deploy.sh [--runtime local|docker|kubernetes] [--plan plan.json] [--workers K] [--store URI] [--port P]
#   ./deploy.sh status | logs [--follow] | stop
# local (the default) runs supervised server processes on this machine: without a plan one process
# using all cores (or --workers K slices), serving every model in the store on port 8080 (8080+i);
# with --plan, one process per server of the plan. docker and kubernetes render/run the plan.
# Every other flag goes to `shoal deploy <runtime>` (see `shoal deploy local --help`).
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")"
source build/setup-env.sh

case "${1:-}" in
  status|logs|stop) exec shoal deploy "$@" ;;
esac

runtime=local
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime="${2:?--runtime needs local, docker or kubernetes}"; shift 2 ;;
    --runtime=*) runtime="${1#--runtime=}"; shift ;;
    --plan) plan="${2:?--plan needs a file}"; [[ "$plan" = /* ]] || plan="$caller/$plan"; args+=(--plan "$plan"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

case "$runtime" in
  local|docker|kubernetes) exec shoal deploy "$runtime" ${args[@]+"${args[@]}"} ;;
  *) echo "deploy.sh: unknown runtime '$runtime': use local, docker or kubernetes" >&2; exit 2 ;;
esac
