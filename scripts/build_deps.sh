#!/usr/bin/env bash
# Build position-independent static libbpf, libelf, zlib and zstd's compressor from Debian's source
# packages, so that ffi/ can link them into one shared object that needs nothing but libc on the
# target host. Debian's own archives are built without -fPIC and cannot go into a .so.
#
#   scripts/build_deps.sh --arch amd64|arm64 --out DIR     (V=1 for verbose, JOBS=N for parallelism)
#
# Result: DIR/lib/{libbpf.a,libelf.a,libz.a,libzstd.a}, DIR/include/{bpf/*.h,libelf.h,gelf.h,nlist.h,
# zlib.h,zconf.h,zstd.h,zstd_errors.h}. DIR/build.log holds the full log, DIR/.stamp the versions built; a second run with the
# same source versions, compiler and script is a no-op. Downloaded source packages stay in DIR/src.
set -Eeuo pipefail

readonly SOURCES=(zlib elfutils libbpf libzstd)
readonly OPT_CFLAGS="-O2 -fPIC"

usage() {
  echo "Usage: $0 --arch amd64|arm64 --out DIR  (env: V=1 verbose, JOBS=N parallel jobs)" >&2
  exit 2
}

die() {
  echo "build_deps: $*" >&2
  exit 1
}

arch=""
out=""
while (($#)); do
  case "$1" in
    --arch) arch="${2:-}"; shift 2 || usage ;;
    --out) out="${2:-}"; shift 2 || usage ;;
    -h | --help) usage ;;
    *) echo "build_deps: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n "$out" ]] || usage
case "$arch" in
  amd64) triplet=x86_64-linux-gnu machine="Advanced Micro Devices X86-64" ;;
  arm64) triplet=aarch64-linux-gnu machine="AArch64" ;;
  *) die "Cannot build for architecture '${arch}': unsupported (use --arch amd64 or --arch arm64)" ;;
esac

# A parent make's flags and the caller's compiler flags must not leak into the sub-builds.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES CFLAGS CPPFLAGS LDFLAGS CC AR RANLIB
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
verbose="${V:-0}"
jobs="${JOBS:-$(nproc)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/build.log"
src="$out/src"
work="$out/work"
tag="[deps ${arch}]"

host_arch="$(dpkg --print-architecture)"
if [[ "$host_arch" == "$arch" ]]; then
  cross=""
  packages=(gcc libc6-dev binutils)
else
  cross="${triplet}-"
  packages=("gcc-${triplet//_/-}" "binutils-${triplet//_/-}" "libc6-dev-${arch}-cross")
fi
packages+=(make dpkg-dev bzip2 xz-utils)
cc="${cross}gcc"
ar="${cross}ar"
ranlib="${cross}ranlib"

# One line per step on the terminal; everything the step prints goes to the log (and to the
# terminal too with V=1). On failure: the log's tail and a non-zero exit.
step() {
  local label="$1"
  shift
  local started=$SECONDS rc
  echo "==> ${label}" >>"$log"
  # errexit is off inside anything run as `cmd || ...`, so the subshell sets it itself.
  set +e
  if [[ "$verbose" == 1 ]]; then
    echo "${tag} ${label}"
    (set -e; "$@") 2>&1 </dev/null | tee -a "$log"
    rc=${PIPESTATUS[0]}
  else
    printf '%s %-38s ' "$tag" "$label"
    (set -e; "$@") >>"$log" 2>&1 </dev/null
    rc=$?
  fi
  set -e
  if ((rc != 0)); then
    [[ "$verbose" == 1 ]] || echo "FAILED"
    echo "----- last 40 lines of ${log} -----" >&2
    tail -n 40 "$log" >&2
    echo "-----" >&2
    die "Cannot ${label} for ${arch}: step failed with exit code ${rc} (full log: ${log}; V=1 shows it live)"
  fi
  local took=$((SECONDS - started))
  if [[ "$verbose" == 1 ]]; then echo "${tag} ${label}: ok (${took}s)"; else echo "ok (${took}s)"; fi
}

have_deb_src() {
  grep -rqsE '^[[:space:]]*(Types:.*deb-src|deb-src[[:space:]])' \
    /etc/apt/sources.list /etc/apt/sources.list.d/
}

# A fresh machine has only binary entries: mirror them (URIs, suites, signing key) as deb-src.
add_deb_src() {
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >/etc/apt/sources.list.d/debian-src.sources
  elif grep -qsE '^deb[[:space:]]' /etc/apt/sources.list; then
    sed -nE 's/^deb([[:space:]])/deb-src\1/p' /etc/apt/sources.list \
      >/etc/apt/sources.list.d/debian-src.list
  else
    echo "No Debian binary source entry found to mirror as deb-src" >&2
    return 1
  fi
}

apt_update() {
  apt-get update -qq -o DPkg::Lock::Timeout=300
}

# Prints "name version" for each source package, from the local index (no download).
source_versions() {
  apt-get source --print-uris --only-source -qq "${SOURCES[@]}" |
    sed -nE "s/^'[^']*' ([^_ ]+)_([^ ]+)\.dsc .*/\1 \2/p"
}

install_missing() {
  local missing=()
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "Installing ${missing[*]}"
  local cmd=(apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}")
  "${cmd[@]}" || { apt_update && "${cmd[@]}"; }
}

# A mirror can lack a candidate (a security update its pool does not carry): then the newest other
# version apt knows is taken, the log says so, and $out/.versions names the version taken.
download_sources() {
  mkdir -p "$src"
  cd "$src"
  local name other
  for name in "${SOURCES[@]}"; do
    apt-get source --download-only --only-source -qq "$name" && continue
    # apt's versions carry the epoch ("1:1.2.13.dfsg-1"), file names and $out/.versions do not.
    for other in $(apt-cache showsrc --only-source "$name" | sed -n 's/^Version: //p' | sort -rV); do
      [[ "${other#*:}" != "${version[$name]}" ]] || continue
      echo "Cannot download ${name} ${version[$name]}: taking ${other#*:}"
      if apt-get source --download-only --only-source -qq "${name}=${other}"; then
        sed -i "s/^${name} .*/${name} ${other#*:}/" "$out/.versions"
        continue 2
      fi
    done
    return 1
  done
}

# Extracts NAME's .dsc (Debian patches applied) into $work/NAME.
extract() {
  local name="$1"
  dpkg-source -x "$src/${name}_${version[$name]}.dsc" "$work/$name"
}

build_zlib() {
  extract zlib
  cd "$work/zlib"
  CC="$cc" AR="$ar" RANLIB="$ranlib" CFLAGS="$OPT_CFLAGS" CHOST="$triplet" \
    ./configure --static --prefix="$out"
  make -j"$jobs" libz.a
  install -D -m644 libz.a "$out/lib/libz.a"
  install -m644 zlib.h zconf.h "$out/include/"
}

# Only the compressor is built: the agent compresses its batches with it (the shim's
# fe_frame_compress), and what reads them decompresses through node:zlib. No decompressor, legacy
# formats, dictionary builder or threads.
build_zstd() {
  extract libzstd
  cd "$work/libzstd/lib"
  make -j"$jobs" V=1 CC="$cc" AR="$ar" CFLAGS="$OPT_CFLAGS" ZSTD_LIB_DECOMPRESSION=0 \
    ZSTD_LIB_DICTBUILDER=0 ZSTD_LIB_DEPRECATED=0 ZSTD_LEGACY_SUPPORT=0 libzstd.a
  install -D -m644 libzstd.a "$out/lib/libzstd.a"
  install -m644 zstd.h zstd_errors.h "$out/include/"
}

# Only libelf/ is built: libelf.a needs nothing from the rest of elfutils (not even lib/libeu.a).
# Compression other than zlib is disabled so the final .so depends on libc alone. -Wno-error
# stands in for Debian's disable_werror.patch, whose eu.am change only takes effect after automake.
build_libelf() {
  extract elfutils
  cd "$work/elfutils"
  local host=()
  [[ -z "$cross" ]] || host=(--host="$triplet")
  ./configure "${host[@]}" CC="$cc" AR="$ar" RANLIB="$ranlib" \
    CFLAGS="$OPT_CFLAGS -Wno-error" CPPFLAGS="-I$out/include" LDFLAGS="-L$out/lib" \
    --disable-debuginfod --disable-libdebuginfod --without-bzlib --without-lzma --without-zstd \
    --disable-nls --disable-symbol-versioning --disable-dependency-tracking
  make -j"$jobs" -C libelf V=1 libelf.a
  install -D -m644 libelf/libelf.a "$out/lib/libelf.a"
  install -m644 libelf/libelf.h libelf/gelf.h libelf/nlist.h "$out/include/"
}

# libbpf's Makefile gives -fPIC only to its shared objects, so it goes into CFLAGS here; CROSS
# builds need CC and AR set explicitly (its CROSS_COMPILE prefix covers CC and LD only).
build_libbpf() {
  extract libbpf
  local objdir="$work/libbpf-obj"
  mkdir -p "$objdir"
  make -j"$jobs" -C "$work/libbpf/src" V=1 BUILD_STATIC_ONLY=1 NO_PKG_CONFIG=1 OBJDIR="$objdir" \
    CC="$cc" AR="$ar" CFLAGS="$OPT_CFLAGS -Wall -std=gnu89" EXTRA_CFLAGS="-I$out/include" \
    "$objdir/libbpf.a"
  install -D -m644 "$objdir/libbpf.a" "$out/lib/libbpf.a"
  make -C "$work/libbpf/src" V=1 install_headers INCLUDEDIR="$out/include"
}

# The proof the archives are usable: every object of all four goes into one -shared object with
# no undefined symbols, for the right machine, needing only libc and the dynamic loader.
verify() {
  local dir="$work/verify"
  mkdir -p "$dir"
  cat >"$dir/probe.c" <<'EOF'
#include <stdio.h>
#include <bpf/libbpf.h>
#include <libelf.h>
#include <zlib.h>
#include <zstd.h>

int deps_probe(char *buf, size_t len) {
  return snprintf(buf, len, "libbpf %u.%u, libelf EV %u, zlib %s, zstd %s", libbpf_major_version(),
                  libbpf_minor_version(), elf_version(EV_CURRENT), zlibVersion(),
                  ZSTD_versionString());
}
EOF
  "$cc" $OPT_CFLAGS -shared -I"$out/include" -o "$dir/probe.so" "$dir/probe.c" \
    -Wl,--whole-archive "$out/lib/libbpf.a" "$out/lib/libelf.a" "$out/lib/libz.a" \
    "$out/lib/libzstd.a" \
    -Wl,--no-whole-archive -Wl,--no-undefined
  local lib
  for lib in libbpf libelf libz libzstd; do
    local machines
    machines="$(readelf -h "$out/lib/$lib.a" | sed -n 's/^ *Machine: *//p' | sort -u)"
    [[ "$machines" == "$machine" ]] ||
      { echo "$lib.a holds objects for '${machines}', expected '${machine}'" >&2; return 1; }
  done
  local needed
  needed="$(readelf -d "$dir/probe.so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd' ')"
  echo "probe.so NEEDED: ${needed}"
  local n
  for n in $needed; do
    [[ "$n" == libc.so.6 || "$n" == ld-linux*.so.* ]] ||
      { echo "probe.so needs ${n}, expected only libc and the dynamic loader" >&2; return 1; }
  done
  echo "probe.so newest glibc symbol version:" \
    "$(readelf -W --dyn-syms "$dir/probe.so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
  if [[ -z "$cross" ]]; then
    # Native: load it and call into all four libraries.
    cat >"$dir/run.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  void *h = dlopen(argv[1], RTLD_NOW);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  int (*probe)(char *, size_t) = (int (*)(char *, size_t))dlsym(h, "deps_probe");
  char buf[128];
  if (!probe || probe(buf, sizeof buf) <= 0) return 1;
  puts(buf);
  return argc == 2 ? 0 : 1;
}
EOF
    "$cc" -o "$dir/run" "$dir/run.c"
    "$dir/run" "$dir/probe.so"
    ldd "$dir/probe.so"
  fi
  echo "Verified: ${needed}"
}


# Makes sure deb-src entries, their index and the toolchain are there; writes "name version" lines
# to $out/.versions (the candidates apt would download now).
prepare() {
  if ! have_deb_src; then
    add_deb_src
    apt_update
  fi
  local versions
  if ! versions="$(source_versions)" || (($(wc -l <<<"$versions") != ${#SOURCES[@]})); then
    apt_update
    versions="$(source_versions)"
  fi
  if (($(wc -l <<<"$versions") != ${#SOURCES[@]})); then
    echo "apt knows source versions only for: ${versions:-none} (wanted ${SOURCES[*]})" >&2
    return 1
  fi
  echo "$versions" | tee "$out/.versions"
  install_missing
}

exec 9>"$out/.lock"
flock 9
: >"$log"
started=$SECONDS

step "check apt sources and toolchain" prepare
declare -A version
while read -r name ver; do version[$name]="$ver"; done <"$out/.versions"
summary="zlib ${version[zlib]}, elfutils ${version[elfutils]}, libbpf ${version[libbpf]}, zstd ${version[libzstd]}"
key="arch=${arch}
${summary}
cc=$("$cc" --version | head -n1)
script=$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$key" && -f "$out/lib/libbpf.a" &&
  -f "$out/lib/libelf.a" && -f "$out/lib/libz.a" && -f "$out/lib/libzstd.a" ]]; then
  touch "$out/.stamp" # a make rule comparing mtimes with this script can rest now
  echo "${tag} up to date (${summary})" | tee -a "$log"
  exit 0
fi

rm -rf "$work" "$out/lib" "$out/include" "$out/.stamp"
mkdir -p "$work" "$out/lib" "$out/include"
step "download source packages" download_sources
while read -r name ver; do version[$name]="$ver"; done <"$out/.versions"
step "build zlib ${version[zlib]}" build_zlib
step "build libelf (elfutils ${version[elfutils]})" build_libelf
step "build libbpf ${version[libbpf]}" build_libbpf
step "build zstd's compressor ${version[libzstd]}" build_zstd
step "verify a -shared link of all four" verify
echo "$key" >"$out/.stamp"
[[ "${KEEP_WORK:-0}" == 1 ]] || rm -rf "$work"
echo "${tag} done in $((SECONDS - started))s: ${out}/lib, ${out}/include ($(grep -m1 '^Verified:' "$log"))"
