#!/usr/bin/env bash
# What each part of the agent costs the churn, measured in one rotation.
#
# Builds this checkout once per patch in bench/decompose/, each with one part of the agent's
# work taken out (measurement-only builds, never shipped):
#   norecord       a sock_ops close is marked in the socket's state, no record written: the
#                  state tracking alone (and nothing for the agent's process to do)
#   noattribution  no identity map looked up: every flow unattributed
#   noshipping     the records read and given back to the ring, not journaled, encoded or spooled
#   nostate        no socket followed (no state inserted, looked up, marked or deleted):
#                  what the per-socket state costs, each record attributed at its close
# then runs `make bench` with this checkout's agent (--output none), each build's
# (`--ref-main NAME=...`, rows marked [NAME]) and the sock_ops close counter (the floor), so the
# ratios between rows are what each part costs.
#
# Usage: bench/decompose.sh [bench arguments, e.g. --reps 8 --duration 4 --no-install]
#   DECOMPOSE_DIR  where the builds go (default /tmp/flowexporter-decompose; replaced)
# Needs root (as `make bench`) and a built checkout (`make build`). Each build is made by
# bench/ref_checkout.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${DECOMPOSE_DIR:-/tmp/flowexporter-decompose}

rm -rf "$out"
refs=()
for patch in bench/decompose/*.patch; do
  name=$(basename "$patch" .patch)
  bench/ref_checkout.sh --patch "$patch" "$out/$name"
  refs+=("--ref-main $name=$out/$name/main.ts")
done
exec make --no-print-directory bench ARGS="--tools agent-none,sockops ${refs[*]} $*"
