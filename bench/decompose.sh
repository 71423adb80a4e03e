#!/usr/bin/env bash
# What each part of the agent costs the churn, measured in one rotation.
#
# Builds this checkout once per patch in bench/decompose/, each with one part of the agent's
# work taken out (measurement-only builds, never shipped):
#   norecord       a sock_ops close is marked in the socket's state, no record written: the
#                  state tracking alone (and nothing for the agent's process to do)
#   noattribution  no identity map looked up: every flow unattributed
#   noshipping     the records read and given back to the ring, not journaled, encoded or spooled
# then runs `make bench` with this checkout's agent (--output none), each build's
# (`--ref-main NAME=...`, rows marked [NAME]) and the sock_ops close counter (the floor), so the
# ratios between rows are what each part costs.
#
# Usage: bench/decompose.sh [bench arguments, e.g. --reps 8 --duration 4 --no-install]
#   DECOMPOSE_DIR  where the builds go (default /tmp/flowexporter-decompose; replaced)
# Needs root (as `make bench`) and a built checkout (`make build`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${DECOMPOSE_DIR:-/tmp/flowexporter-decompose}

if [[ ! -e build/libflowexporter.so ]]; then
  echo "decompose: build this checkout first (make build)" >&2
  exit 1
fi
rm -rf "$out"
refs=()
for patch in bench/decompose/*.patch; do
  name=$(basename "$patch" .patch)
  if ! git apply --check "$patch" 2>/dev/null; then
    echo "decompose: $patch no longer applies to this checkout: update it (git apply --check $patch)" >&2
    exit 1
  fi
  tree=$out/$name
  mkdir -p "$tree/build"
  # The checkout as it is (uncommitted changes too), without its build, then the patch.
  git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -c 2>/dev/null | tar -x -C "$tree"
  (cd "$tree" && git apply "$root/$patch")
  # The tools and dependencies are this checkout's: only the BPF object and the shim are built.
  for f in tools deps vmlinux.h .apt-stamp; do ln -s "$root/build/$f" "$tree/build/$f"; done
  ln -s "$root/node_modules" "$tree/node_modules"
  echo "  BUILD    $name ($tree)" >&2
  make -C "$tree" --no-print-directory build >/dev/null
  refs+=("--ref-main $name=$tree/main.ts")
done
exec make --no-print-directory bench ARGS="--tools agent-none,sockops ${refs[*]} $*"
