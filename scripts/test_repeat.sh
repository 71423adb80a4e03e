#!/usr/bin/env bash
# A suite that is green "most of the time" is red. This runs CI's command on a fresh clone of HEAD
# N times in a row (default 10) while a busy loop holds one core, and stops at the first failure.
#
#   scripts/test_repeat.sh [N]      (as root; about 1 minute a run, the first one also builds)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
clone="$(mktemp -d /tmp/flowexporter-repeat-XXXXXX)"
git clone -q . "$clone"
taskset -c 0 sh -c 'while :; do :; done' &
hog=$!
trap 'kill "$hog" 2>/dev/null; rm -rf "$clone"' EXIT
for ((i = 1; i <= runs; i++)); do
  start=$SECONDS
  if ! (cd "$clone" && CI=true bash .ci/run >"$clone/run-$i.log" 2>&1); then
    echo "run $i of $runs FAILED after $((SECONDS - start)) s: $(tail -n 1 "$clone/run-$i.log")" >&2
    tail -n 60 "$clone/run-$i.log" >&2
    exit 1
  fi
  echo "run $i of $runs: $(tail -n 1 "$clone/run-$i.log") ($((SECONDS - start)) s)"
done
