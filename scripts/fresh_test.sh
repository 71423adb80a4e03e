#!/usr/bin/env bash
# The proof behind the README's promise: its test command, copied verbatim, passes on a bare
# Debian. Builds a minimal Debian root file system (debootstrap --variant=minbase: bash, apt and
# little else; no make, no compiler, no Node), copies this checkout's HEAD into it, and runs
# `./flowexporter.sh test` there under podman (runc, privileged, host network, PID and cgroup
# namespaces: the kernel tests load BPF programs), timing each phase.
#
#   scripts/fresh_test.sh [--keep | --reuse]   (make fresh-test; root; a few minutes)
#
# The mirror and suite are the host's own apt configuration. Everything lives in
# build/fresh/; --keep keeps the root file system for a second look, --reuse starts from it
# (a fresh copy of HEAD on the same bare system: the container writes to an overlay, so
# nothing a run installs stays in it).
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
reuse=0
for arg in "$@"; do
  case "$arg" in
  --keep) keep=1 ;;
  --reuse) keep=1 reuse=1 ;; # the root file system of an earlier --keep run
  *) echo "Usage: $0 [--keep | --reuse]" >&2 && exit 2 ;;
  esac
done
work="$PWD/build/fresh"
rootfs="$work/rootfs"
name="flowexporter-fresh-$$"
phases=()

say() { echo "fresh-test: $*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
timed() {
  local label="$1"
  shift
  local start=$SECONDS
  "$@"
  phases+=("$(printf '%-36s %4d s' "$label" $((SECONDS - start)))")
}

[[ "$(id -u)" == 0 ]] || fail "run as root (debootstrap and privileged podman need it)"

install_tools() {
  local missing=()
  for p in debootstrap podman runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# The host's first binary Debian entry: the mirror and the release this machine uses.
host_mirror() {
  local file uri
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" ]] || continue
    uri="$(awk '/^Types:/ { deb = ($0 ~ /(^|[ \t])deb([ \t]|$)/) } deb && /^URIs:/ { print $2; exit }' "$file")"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  done
  sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1
}
host_suite() {
  . /etc/os-release
  echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
}

make_rootfs() {
  if ((reuse)) && [[ -x "$rootfs/bin/bash" ]]; then
    rm -rf "$rootfs/root/flowexporter"
    git archive --format=tar --prefix=flowexporter/ HEAD | tar -x -C "$rootfs/root"
    return
  fi
  rm -rf "$rootfs"
  mkdir -p "$work"
  local mirror suite
  mirror="$(host_mirror)"
  suite="$(host_suite)"
  [[ -n "$mirror" ]] || fail "no Debian mirror in this host's apt configuration"
  say "debootstrap --variant=minbase $suite from the host's mirror"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap failed (see $work/debootstrap.log)"
  if chroot "$rootfs" sh -c 'command -v make' >/dev/null; then fail "the minbase root file system has make"; fi
  copy_site_configuration
  git archive --format=tar --prefix=flowexporter/ HEAD | tar -x -C "$rootfs/root"
}

# The smaller of what the tests want and the hard limit ("unlimited" allows anything).
capped() {
  local want="$1" hard="$2"
  if [[ "$hard" == unlimited ]] || ((hard >= want)); then echo "$want"; else echo "$hard"; fi
}

run_readme_command() {
  say "running ./flowexporter.sh test in the fresh root file system"
  # The README's command, as written, by bash: nothing else is installed.
  # runc cannot raise a limit above this process's hard limits: ask for exactly those.
  local nofile nproc
  nofile="$(capped 65536 "$(ulimit -Hn)")"
  nproc="$(capped 4096 "$(ulimit -Hu)")"
  # The site's CA settings in the environment, as a new machine here has them.
  local site_env=() var
  for var in SSL_CERT_FILE SSL_CERT_DIR NODE_EXTRA_CA_CERTS DENO_CERT DENO_TLS_CA_STORE; do
    [[ -n "${!var:-}" ]] && site_env+=(--env "$var=${!var}")
  done
  podman run --rm --name "$name" --privileged --network host --pid host --cgroupns host \
    "${site_env[@]}" \
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
    -v /sys/fs/bpf:/sys/fs/bpf -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/fs/cgroup:/sys/fs/cgroup \
    --env CI=true --env NO_COLOR=1 --workdir /root/flowexporter --rootfs "$rootfs:O" \
    /bin/bash -c './flowexporter.sh test' 2>&1 | tee "$work/test.log"
  local status=${PIPESTATUS[0]}
  ((status == 0)) || fail "./flowexporter.sh test exited $status (see $work/test.log)"
}

# A machine here reaches its package registries through the site's configuration: its CA
# certificates and npm settings. A new machine of the same site has them, so the fresh root file
# system gets them too; nothing else of this host goes in.
copy_site_configuration() {
  local path
  for path in /usr/local/share/ca-certificates /etc/ssl/certs/ca-certificates.crt /etc/npmrc \
    /usr/etc/npmrc /root/.npmrc; do
    [[ -e "$path" ]] || continue
    mkdir -p "$rootfs$(dirname "$path")"
    cp -a "$path" "$rootfs$(dirname "$path")/"
  done
}

cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  ((keep)) || rm -rf "$rootfs"
}
trap cleanup EXIT

timed "install debootstrap, podman, runc" install_tools
timed "debootstrap --variant=minbase" make_rootfs
timed "./flowexporter.sh test (fresh)" run_readme_command
say "phases:"
for phase in "${phases[@]}"; do echo "  $phase" >&2; done
grep -aE '^(ok|FAILED) \| [0-9]+ passed' "$work/test.log" | tail -n 1 >&2 || true
say PASS
