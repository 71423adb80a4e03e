#!/usr/bin/env bash
# A built copy of this checkout, for `make bench ARGS="--ref-main DIR/main.ts"`.
#
# Usage: bench/ref_checkout.sh [--patch FILE] DIR [REV]
#   DIR      where the copy goes (replaced)
#   REV      the commit to copy (git archive); without it, the working tree as it is,
#            uncommitted changes included
#   --patch  a patch applied to the copy before it is built (bench/decompose/*.patch)
# The copy links this checkout's tools, dependencies and vmlinux.h, so only its BPF object and
# its shim are built. This checkout must be built (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

patch=""
if [[ "${1:-}" == --patch ]]; then
  patch=$(realpath "$2")
  shift 2
fi
if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: bench/ref_checkout.sh [--patch FILE] DIR [REV]" >&2
  exit 2
fi
dir=$1
rev=${2:-}
if [[ ! -e build/libflowexporter.so ]]; then
  echo "ref_checkout: build this checkout first (make build)" >&2
  exit 1
fi

rm -rf "$dir"
mkdir -p "$dir/build"
if [[ -n "$rev" ]]; then
  git archive "$rev" | tar -x -C "$dir"
else
  git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -c 2>/dev/null | tar -x -C "$dir"
fi
if [[ -n "$patch" ]] && ! (cd "$dir" && git apply "$patch"); then
  echo "ref_checkout: $patch does not apply to the copy: update it" >&2
  exit 1
fi
for f in tools deps vmlinux.h .apt-stamp; do ln -s "$root/build/$f" "$dir/build/$f"; done
ln -s "$root/node_modules" "$dir/node_modules"
echo "  BUILD    $dir" >&2
make -C "$dir" --no-print-directory build >/dev/null
