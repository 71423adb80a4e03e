#!/usr/bin/env bash
# `make dist`: check the per-architecture shared objects, record their checksums, prove each one
# loads on its architecture, then compile one executable per architecture with the shared object
# embedded. make builds build/<arch>/libflowexporter.so before calling this (mk/dist.mk).
#
#   scripts/dist.sh --deno DENO --deno-version X.Y.Z --out DIR --flags "COMPILE FLAGS" ARCH...
#
# COMPILE FLAGS: the permissions and the V8 flags of flowexporter.service's DENO_V8_FLAGS, which a
# compiled binary does not read at run time (mk/dist.mk).
# ARCH is amd64 or arm64. For the architectures this machine does not run natively, the checks
# run under qemu-user (Debian's qemu-user-static, installed when missing).
#
# deno compile needs a "denort" base binary per target, which it downloads unless it finds one:
#   DENORT_DIR=DIR   a directory holding denort-<target>.zip files as published for this Deno release
#                    (copied into deno's cache, where deno compile looks before downloading)
#   DENORT_BIN=FILE  an unzipped denort; used for the target whose machine type it has
# Every check runs before deno compile; a missing base binary fails last, with what to fetch.
set -Eeuo pipefail

die() {
  echo "dist: $*" >&2
  exit 1
}

deno="" deno_version="" out="" flags=""
arches=()
while (($#)); do
  case "$1" in
    --deno) deno="$2"; shift 2 ;;
    --deno-version) deno_version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --flags) flags="$2"; shift 2 ;;
    amd64 | arm64) arches+=("$1"); shift ;;
    *) die "Unknown argument $1 (usage: $0 --deno DENO --deno-version V --out DIR --flags F amd64|arm64...)" ;;
  esac
done
[[ -x "$deno" && -n "$deno_version" && -n "$out" && ${#arches[@]} -gt 0 ]] ||
  die "Missing arguments (usage: $0 --deno DENO --deno-version V --out DIR --flags F amd64|arm64...)"

cd "$(dirname "$0")/.."
deno="$(realpath "$deno")"
export LC_ALL=C
host_arch="$(dpkg --print-architecture)"
work="build/dist-check"
rm -rf "$work"
mkdir -p "$work" "$out"

target_of() { case "$1" in amd64) echo x86_64-unknown-linux-gnu ;; arm64) echo aarch64-unknown-linux-gnu ;; esac; }
machine_of() { case "$1" in amd64) echo "Advanced Micro Devices X86-64" ;; arm64) echo AArch64 ;; esac; }
triplet_of() { case "$1" in amd64) echo x86_64-linux-gnu ;; arm64) echo aarch64-linux-gnu ;; esac; }
qemu_of() { case "$1" in amd64) echo qemu-x86_64-static ;; arm64) echo qemu-aarch64-static ;; esac; }
npm_deno_of() { case "$1" in amd64) echo @deno/linux-x64-glibc ;; arm64) echo @deno/linux-arm64-glibc ;; esac; }
elf_machine() { readelf -h "$1" 2>/dev/null | sed -n 's/^ *Machine: *//p'; }

# Runs an ARCH executable: natively, or under qemu-user with the cross sysroot as its root.
run_on() {
  local arch="$1"
  shift
  runner_for "$arch"
  "${runner[@]}" "$@"
}

# Sets `runner` to the command prefix that runs ARCH executables here.
runner_for() {
  runner=()
  [[ "$1" == "$host_arch" ]] || runner=("$(qemu_of "$1")" -L "/usr/$(triplet_of "$1")")
}

install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "dist: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "Cannot install ${missing[*]} with apt-get (run as root on Debian)"
}

packages=(binutils)
for arch in "${arches[@]}"; do
  [[ "$arch" == "$host_arch" ]] && continue
  packages+=(qemu-user-static "gcc-$(triplet_of "$arch" | tr _ -)" "libc6-dev-${arch}-cross")
done
install_missing "${packages[@]}"

abi_version="$(sed -nE 's/^export const ABI_VERSION = ([0-9]+);$/\1/p' ffi/symbols.ts)"
agent_version="$(sed -nE 's/^export const VERSION = "([^"]+)";$/\1/p' lib/version.ts)"
mapfile -t symbols < <(sed -nE 's/^  (fe_[a-z0-9_]+): \{.*/\1/p' ffi/symbols.ts)
[[ -n "$abi_version" && -n "$agent_version" && ${#symbols[@]} -gt 0 ]] ||
  die "Cannot read ABI_VERSION, VERSION or the symbol table from ffi/symbols.ts and lib/version.ts"

# 1. The BPF object is compiled once and embedded in every architecture's shim. It must not depend
# on __TARGET_ARCH (only PT_REGS-style kprobe access does): compile it both ways and compare.
bpf_neutral() {
  local a
  for a in x86 arm64; do
    clang -g -O2 -target bpf -D__TARGET_ARCH_$a -Ibuild -Ibpf -I"build/deps/$host_arch/include" \
      -c bpf/flowexporter.bpf.c -o "$work/bpf-$a.o"
    llvm-strip -g "$work/bpf-$a.o"
  done
  cmp -s "$work/bpf-x86.o" "$work/bpf-arm64.o" ||
    die "The BPF object differs between __TARGET_ARCH_x86 and __TARGET_ARCH_arm64: build one per architecture before embedding it in both shims"
  echo "  CHECK    BPF object identical for x86 and arm64 (sha256 $(sha256sum <"$work/bpf-x86.o" | cut -c1-16)…)"
}
bpf_neutral

# 2. Each shared object: right machine, libc only, every symbol of ffi/symbols.ts exported, and a
# real load on its architecture calling fe_abi_version(). Then its checksum for the binary.
cat >"$work/abi_probe.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
/* Loads argv[1] with every symbol resolved now and checks fe_abi_version() == argv[2]. */
int main(int argc, char **argv) {
  if (argc != 3) return 2;
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
  unsigned (*abi)(void) = (unsigned (*)(void))dlsym(h, "fe_abi_version");
  if (!abi) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 1; }
  unsigned v = abi();
  printf("fe_abi_version() = %u\n", v);
  return v == strtoul(argv[2], NULL, 10) ? 0 : 1;
}
EOF

check_shim() {
  local arch="$1" lib="build/$1/libflowexporter.so"
  [[ -f "$lib" ]] || die "Cannot find $lib (make builds it before this script: run make dist)"
  local machine
  machine="$(elf_machine "$lib")"
  [[ "$machine" == "$(machine_of "$arch")" ]] || die "$lib is for '$machine', expected $(machine_of "$arch")"
  local needed
  needed="$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd' ')"
  local n
  for n in $needed; do
    [[ "$n" == libc.so.6 || "$n" == ld-linux*.so.* ]] ||
      die "$lib needs $n, expected only libc and the dynamic loader"
  done
  local exported missing=() s
  exported="$(readelf -W --dyn-syms "$lib" | awk '$5 == "GLOBAL" && $7 != "UND" {print $8}')"
  for s in "${symbols[@]}"; do grep -qx "$s" <<<"$exported" || missing+=("$s"); done
  ((${#missing[@]} == 0)) || die "$lib does not export ${missing[*]} (ffi/symbols.ts expects them)"
  local probe="$work/abi_probe-$arch" cc=gcc
  [[ "$arch" == "$host_arch" ]] || cc="$(triplet_of "$arch")-gcc"
  "$cc" -O2 -o "$probe" "$work/abi_probe.c"
  local result
  result="$(run_on "$arch" "$probe" "$lib" "$abi_version" 2>&1)" ||
    die "Cannot load $lib on $arch: ${result} (expected ABI $abi_version)"
  (cd "build/$arch" && sha256sum libflowexporter.so >libflowexporter.so.sha256)
  local glibc
  glibc="$(readelf -W --dyn-syms "$lib" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
  echo "  CHECK    $lib: $machine, NEEDED $needed, ${#symbols[@]} symbols, newest $glibc," \
    "$result$([[ "$arch" == "$host_arch" ]] || echo " under $(qemu_of "$arch")")"
  echo "  SHA256   build/$arch/libflowexporter.so.sha256 $(cut -c1-16 "build/$arch/libflowexporter.so.sha256")…"
}

# 3. The TypeScript side on each architecture's Deno (from npm, under qemu when foreign): the
# loader of ffi/symbols.ts finds the asset laid out as in the compiled binary, verifies it and
# opens it with the full symbol table.
check_loader() {
  local arch="$1" deno_bin="$deno"
  if [[ "$arch" != "$host_arch" ]]; then
    local pkg dir="build/tools/$arch"
    pkg="$(npm_deno_of "$arch")"
    if [[ ! -x "$dir/package/deno" ]]; then
      mkdir -p "$dir"
      (cd "$dir" && npm pack --silent "$pkg@$deno_version" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz) ||
        die "Cannot fetch $pkg@$deno_version from npm to check the $arch loader"
    fi
    deno_bin="$PWD/$dir/package/deno"
  fi
  local layout="$work/layout-$arch"
  mkdir -p "$layout/build/$arch"
  # ffi/ and the lib/ modules it imports (the record layout, error texts, the SHA-256).
  cp -r ffi lib "$layout/"
  cp "build/$arch/libflowexporter.so" "build/$arch/libflowexporter.so.sha256" "$layout/build/$arch/"
  local result
  # shellcheck disable=SC2016 # TypeScript, not shell
  result="$(cd "$layout" && DENO_DIR="$PWD/../deno-dir-$arch" run_on "$arch" "$deno_bin" eval --ext=ts --quiet '
    import { ABI_VERSION, nativePath, openNative } from "./ffi/symbols.ts";
    const abi = openNative().fe_abi_version();
    const from = Deno.readLinkSync(nativePath()!);
    if (abi !== ABI_VERSION) throw new Error(`ABI ${abi}, expected ${ABI_VERSION}`);
    console.log(`${Deno.build.target}: loaded ${from}, ABI ${abi}`);' 2>&1)" ||
    die "Cannot load the embedded-layout library with Deno on $arch: $result"
  echo "  CHECK    $result"
}

for arch in "${arches[@]}"; do
  check_shim "$arch"
  check_loader "$arch"
done

# 4. deno compile, one executable per target. Base binaries: DENORT_BIN for the matching target,
# DENORT_DIR zips copied into deno's cache, else deno's own cache or download.
deno_dir="$("$deno" info --json | sed -nE 's/^ *"denoDir": "(.*)",?$/\1/p')"
cache="$deno_dir/dl/release/v$deno_version"
missing=()
built=()
for arch in "${arches[@]}"; do
  target="$(target_of "$arch")"
  zip="denort-$target.zip"
  if [[ -n "${DENORT_DIR:-}" && -f "$DENORT_DIR/$zip" && ! -f "$cache/$zip" ]]; then
    mkdir -p "$cache" && cp "$DENORT_DIR/$zip" "$cache/$zip"
  fi
  base=()
  if [[ -n "${DENORT_BIN:-}" ]]; then
    if [[ "$(elf_machine "$DENORT_BIN")" == "$(machine_of "$arch")" ]]; then
      base=(env DENORT_BIN="$DENORT_BIN")
    else
      base=(env -u DENORT_BIN)
    fi
  fi
  exe="$out/flowexporter-$target"
  runner_for "$arch"
  echo "  COMPILE  $exe"
  log="$work/compile-$target.log"
  # The shim and its checksum are loaded by path, so they are named, and so is the collector's
  # page (collector/web.ts reads its files, cytoscape's among them). Deno embeds every
  # node_modules directory it finds: the npm-installed Deno in build/tools (95 MB) is not ours.
  # shellcheck disable=SC2086 # the compile flags are separate words
  if ! "${base[@]}" "$deno" compile --quiet --target "$target" --output "$exe" $flags \
    --include collector/web --include node_modules/cytoscape/dist/cytoscape.esm.min.mjs \
    --include "build/$arch/libflowexporter.so" --include "build/$arch/libflowexporter.so.sha256" \
    --exclude build/tools/node_modules main.ts >"$log" 2>&1; then
    if grep -q 'Setting up base binary\|denort' "$log"; then
      missing+=("$target")
      continue
    fi
    cat "$log" >&2
    die "deno compile failed for $target (log: $log)"
  fi
  # The compiled binary runs the agent, not a Deno CLI (as a deno binary given as base would).
  version="$(run_on "$arch" "$exe" --version 2>&1 </dev/null)" || true
  [[ "$version" == "$agent_version" ]] ||
    die "$exe --version printed '${version%%$'\n'*}', expected $agent_version (is the base binary from DENORT_BIN or DENORT_DIR a denort of Deno $deno_version for $target?)"
  # Without capabilities `run` stops at the privilege check, which comes after the embedded
  # library was extracted, verified, loaded and its ABI checked.
  drop=()
  [[ "$(id -u)" != 0 ]] || drop=(setpriv --bounding-set=-all --inh-caps=-all --)
  smoke="$("${drop[@]}" "${runner[@]}" "$exe" run --output none 2>&1 </dev/null)" || true
  [[ "$smoke" == *CAP_BPF* ]] ||
    die "$exe run did not get as far as the privilege check, so the embedded library did not load: $smoke"
  echo "  CHECK    $exe: --version $version; without capabilities: ${smoke#flowexporter: }"
  built+=("$exe")
done

if ((${#built[@]})); then
  (cd "$out" && sha256sum "${built[@]##*/}" >SHA256SUMS)
  echo "  SHA256   $out/SHA256SUMS"
fi
if ((${#missing[@]})); then
  for target in "${missing[@]}"; do
    echo "dist: deno compile needs the denort base binary for $target, which it could not download:" \
      "on a networked machine fetch denort-$target.zip of Deno $deno_version" \
      "(https://dl.deno.land/release/v$deno_version/denort-$target.zip) and run" \
      "make dist DENORT_DIR=/dir/with/the/zips (or DENORT_BIN=/path/to/unzipped/denort for that target)" >&2
  done
  exit 1
fi
echo "  DIST     ${built[*]}"
