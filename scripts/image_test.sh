#!/usr/bin/env bash
# `make image-test`: builds the container image (packaging/Containerfile) from what this machine
# has, starts the agent in it with the privileges the Containerfile documents, makes a loopback
# connection on the host with known ports and checks that its record came out of the container's
# stdout. Prints PASS or FAIL last; exits non-zero on FAIL. Not part of `make test`.
#
#   scripts/image_test.sh [--build-only]
#
# env: IMAGE (default localhost/flowexporter:dev), VARIANT=source|compiled (default: compiled when
#      dist/ holds a binary for this machine, else source), PRIVILEGED=1 (run --privileged instead
#      of the three capabilities), KEEP=1 (leave the container for inspection)
#
# Podman runs with the runc runtime; ulimits are given explicitly because the defaults podman
# derives from this sandbox's limits are refused by runc.
set -Eeuo pipefail

cd "$(dirname "$0")/.."
readonly IMAGE="${IMAGE:-localhost/flowexporter:dev}"
readonly CONTEXT=build/image
readonly DENO=build/tools/node_modules/.bin/deno
readonly PODMAN=(podman --runtime runc)
build_only=0
[[ "${1:-}" == "--build-only" ]] && build_only=1

fail() {
  echo "image-test: $*" >&2
  echo "FAIL"
  exit 1
}

install_missing() {
  local missing=() p
  for p in podman runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "image-test: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    fail "Cannot install ${missing[*]} with apt-get (run as root on Debian)"
}

# Copies an executable's shared libraries and dynamic loader into ROOT at the same paths.
copy_libs() {
  local exe="$1" root="$2" lib
  for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$(realpath "$lib")" "$root$lib"
  done
}

# The context: source/ (deno run of the agent's modules) and, with a compiled binary, compiled/.
stage() {
  [[ -x "$DENO" && -f build/libflowexporter.so ]] || fail "Cannot stage the image: run make build first"
  rm -rf "$CONTEXT"
  local src="$CONTEXT/source"
  # A fresh tree each time: a leftover one would nest copies (cp -a into an existing directory).
  rm -rf "$src" "$CONTEXT/compiled"
  install -D -m 0755 "$(realpath "$DENO")" "$src/usr/local/bin/deno"
  copy_libs "$src/usr/local/bin/deno" "$src"
  install -d -m 1777 "$src/tmp"
  local arch
  arch="$(dpkg --print-architecture)"
  install -d "$src/var/cache/deno" "$src/app/build/$arch"
  # The module graph deno resolves from the entry point: exactly what runs.
  local f
  # shellcheck disable=SC2016 # TypeScript, not shell
  for f in $("$DENO" eval --quiet '
    for (const entry of ["main.ts"]) {
      const cmd = new Deno.Command(Deno.execPath(), { args: ["info", "--json", entry] });
      const info = JSON.parse(new TextDecoder().decode(cmd.outputSync().stdout));
      for (const m of info.modules) {
        if (m.specifier.startsWith("file://")) console.log(new URL(m.specifier).pathname);
      }
    }'); do
    install -D -m 0644 "$f" "$src/app/$(realpath --relative-to=. "$f")"
  done
  cp deno.json deno.lock package.json "$src/app/"
  mkdir -p "$src/app/node_modules" && cp -a "$(realpath node_modules)/." "$src/app/node_modules/"
  # Laid out as in the compiled binary (no build/libflowexporter.so): the agent verifies it and
  # loads it from a sealed memfd, as the compiled variant does.
  install -m 0644 build/libflowexporter.so "$src/app/build/$arch/"
  (cd "$src/app/build/$arch" && sha256sum libflowexporter.so >libflowexporter.so.sha256)
  local target exe
  target="$(uname -m)-unknown-linux-gnu"
  exe="dist/flowexporter-$target"
  if [[ -x "$exe" ]]; then
    install -D -m 0755 "$exe" "$CONTEXT/compiled/usr/local/bin/flowexporter"
    copy_libs "$src/usr/local/bin/deno" "$CONTEXT/compiled"
    install -d -m 1777 "$CONTEXT/compiled/tmp"
  fi
}

# Debian 12's podman (containers-common 0.50) lets bpf() and perf_event_open() through its default
# seccomp profile only with CAP_SYS_ADMIN; newer profiles also with CAP_BPF and CAP_PERFMON. This
# writes the runtime's default profile with the newer rules, for `--security-opt seccomp=`.
seccomp_profile() {
  local default=/usr/share/containers/seccomp.json
  [[ -f "$default" ]] || fail "Cannot find podman's default seccomp profile $default"
  # shellcheck disable=SC2016 # TypeScript, not shell
  "$DENO" eval --quiet '
    const [from, to] = Deno.args;
    const profile = JSON.parse(Deno.readTextFileSync(from));
    const byCap = { bpf: "CAP_BPF", perf_event_open: "CAP_PERFMON" };
    for (const rule of profile.syscalls) {
      if (rule.action !== "SCMP_ACT_ALLOW" && !rule.includes?.caps) {
        rule.names = rule.names.filter((n) => !(n in byCap));
      }
    }
    for (const [name, cap] of Object.entries(byCap)) {
      profile.syscalls.push({ names: [name], action: "SCMP_ACT_ALLOW", includes: { caps: [cap] } });
    }
    Deno.writeTextFileSync(to, JSON.stringify(profile, null, 2));' "$default" "$CONTEXT/seccomp.json"
}

install_missing
stage
seccomp_profile
variant="${VARIANT:-$([[ -d "$CONTEXT/compiled" ]] && echo compiled || echo source)}"
[[ "$variant" == source || -d "$CONTEXT/compiled" ]] ||
  fail "Cannot build VARIANT=compiled: no dist/flowexporter-$(uname -m)-unknown-linux-gnu (run make dist)"
echo "image-test: building $IMAGE ($variant) from $CONTEXT"
"${PODMAN[@]}" build --quiet --build-arg "VARIANT=$variant" -f packaging/Containerfile -t "$IMAGE" \
  "$CONTEXT" >/dev/null || fail "podman build failed"
echo "image-test: $IMAGE is $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"
((build_only)) && exit 0

name="flowexporter-image-test-$$"
pin_dir="/sys/fs/bpf/flowexporter-image-test-$$"
privileges=(--cap-drop all --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN --cap-add SYS_RESOURCE
  --security-opt "seccomp=$CONTEXT/seccomp.json")
[[ "${PRIVILEGED:-0}" == 1 ]] && privileges=(--privileged)
cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    "${PODMAN[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  fi
  rm -rf "$pin_dir"
}
trap cleanup EXIT

echo "image-test: starting $name (${privileges[*]}, host network and PID namespaces)"
# runc cannot raise a limit above this process's hard limit: ask for what the unit file asks
# (65536 files, unlimited memlock) where the host allows it.
capped() {
  local want="$1" hard="$2"
  if [[ "$hard" == unlimited ]]; then echo "$want"; elif [[ "$want" == -1 ]] || ((hard < want)); then echo "$hard"; else echo "$want"; fi
}
nofile="$(capped 65536 "$(ulimit -Hn)")"
nproc="$(capped 4096 "$(ulimit -Hu)")"
memlock="$(capped -1 "$(ulimit -Hl)")"
[[ "$memlock" == -1 ]] || memlock="$((memlock * 1024))" # ulimit -l counts KiB, podman bytes
# The spool is durable state: a host directory, as in production.
rm -rf "$CONTEXT/state" && install -d -m 0700 "$CONTEXT/state"
"${PODMAN[@]}" run -d --name "$name" --network host --pid host --cgroupns host "${privileges[@]}" \
  --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
  --ulimit "memlock=$memlock:$memlock" --read-only \
  -v /sys/fs/bpf:/sys/fs/bpf -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
  -v /sys/kernel/btf:/sys/kernel/btf:ro -v "$(realpath "$CONTEXT/state"):/var/lib/flowexporter" \
  "$IMAGE" run --pin-dir "$pin_dir" --poll-ms 50 >/dev/null || fail "podman run failed"

logs() { "${PODMAN[@]}" logs "$name" 2>"$CONTEXT/stderr.log" >"$CONTEXT/stdout.log" || true; }
for ((i = 0; i < 300; i++)); do
  logs
  grep -q "capturing TCP flows" "$CONTEXT/stderr.log" && break
  [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name")" == true ]] ||
    fail "The agent exited before capturing: $(tail -n 5 "$CONTEXT/stderr.log")"
  sleep 0.1
done
grep -q "capturing TCP flows" "$CONTEXT/stderr.log" || fail "The agent did not start in 30 s: $(cat "$CONTEXT/stderr.log")"
sed 's/^/  agent: /' "$CONTEXT/stderr.log"
pid="$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$name")"
loaded="$(grep -o '[^ ]*libflowexporter[^ ]*' "/proc/$pid/maps" | sort -u | paste -sd' ')"
[[ "$loaded" == /memfd:libflowexporter.so ]] ||
  fail "The agent did not load the shared object from a memfd: ${loaded:-nothing mapped}"
echo "image-test: the agent (pid $pid on the host) maps $loaded"

# One connection on the host with known ports: 3000 bytes up, 5000 back, client closes first.
# shellcheck disable=SC2016 # TypeScript, not shell
ports="$("$DENO" eval --quiet '
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await listener.accept();
  await client.write(new Uint8Array(3000));
  const buf = new Uint8Array(65536);
  for (let got = 0; got < 3000;) got += (await server.read(buf)) ?? Infinity;
  await server.write(new Uint8Array(5000));
  for (let got = 0; got < 5000;) got += (await client.read(buf)) ?? Infinity;
  client.close();
  await server.read(buf);
  server.close();
  listener.close();
  console.log(client.localAddr.port, listener.addr.port);')" || fail "The loopback connection failed"
read -r client_port server_port <<<"$ports"
echo "image-test: host connection 127.0.0.1:$client_port -> 127.0.0.1:$server_port"

pattern="\"local_port\":$client_port,\"remote_ip\":\"127.0.0.1\",\"remote_port\":$server_port,"
record=""
for ((i = 0; i < 100; i++)); do
  logs
  record="$(grep -F "$pattern" "$CONTEXT/stdout.log" || true)"
  [[ -n "$record" ]] && break
  sleep 0.1
done
[[ -n "$record" ]] || fail "No record for client port $client_port on the container's stdout; stderr: $(cat "$CONTEXT/stderr.log")"
echo "image-test: record on the container's stdout: $record"
if ! grep -q '"bytes_sent":3000,' <<<"$record" || ! grep -q '"bytes_received":5000,' <<<"$record"; then
  fail "The record's byte counts are not 3000 sent and 5000 received"
fi

"${PODMAN[@]}" stop -t 10 "$name" >/dev/null
code="$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
logs
tail -n 1 "$CONTEXT/stderr.log" | sed 's/^/  agent: /'
[[ "$code" == 0 ]] || fail "The agent exited with code $code after SIGTERM"
echo "PASS"
