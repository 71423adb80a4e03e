#!/usr/bin/env bash
# The README's two commands on a machine that has nothing but bash (a minimal Debian or Ubuntu):
#   ./flowexporter.sh run [ARGS]   install what is missing, build, run the agent (records on stdout)
#   ./flowexporter.sh test         install what is missing, build, run every test
# It installs make (as root, with apt-get) when it is missing, then runs `make run` or
# `make test`, which install the rest. Everything but flow records goes to stderr.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  echo "Usage: $0 run [agent options] | $0 test [deno test options]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
command="$1"
shift
case "$command" in
run | test) ;;
*) usage ;;
esac

if ! command -v make >/dev/null; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "flowexporter.sh: make is missing: install it (apt-get install make) as root" >&2
    exit 1
  fi
  echo "  APT      make" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends make; } >/dev/null ||
    { echo "flowexporter.sh: cannot install make with apt-get" >&2; exit 1; }
fi

if [[ "$command" == run ]]; then
  exec make --no-print-directory -s run ARGS="$*"
fi
exec make --no-print-directory -s test TEST_ARGS="$*"
