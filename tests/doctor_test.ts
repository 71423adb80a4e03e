import assert from "node:assert/strict";
import { type DoctorProbes, runDoctor } from "../cli/doctor.ts";
import { NativeLoadError, Probe } from "../ffi/symbols.ts";
import { CertificateError, type CertificateIdentity } from "../identity/host_identity.ts";
import { IS_ROOT } from "./_agent.ts";
import { unreachableEndpoint } from "./_traffic.ts";

const NOW = new Date("2026-01-01T12:00:00.000Z");
const DAY_MS = 86_400_000;

const noConfigFile = (path: string): string => {
  throw new Deno.errors.NotFound(path);
};

/** The doctor's report lines keyed by check name: `status detail`. */
function parseReport(lines: string[]): Map<string, { status: string; detail: string }> {
  const out = new Map<string, { status: string; detail: string }>();
  for (const line of lines.slice(0, -1)) {
    const m = /^(pass|warn|fail|skip) +(\S+) +(.*)$/.exec(line);
    assert.ok(m, `unexpected report line: ${line}`);
    out.set(m[2], { status: m[1], detail: m[3] });
  }
  return out;
}

function identity(notAfter: Date): CertificateIdentity {
  return {
    workloadId: "spiffe://example.org/node-1",
    from: "uri-san",
    subject: "CN=node-1",
    notBefore: new Date(NOW.getTime() - DAY_MS),
    notAfter,
    fingerprint256: "00",
  };
}

const CAP_NET_ADMIN = 1n << 12n;
const CAP_PERFMON = 1n << 38n;
const CAP_BPF = 1n << 39n;

/** Everything the shim's probe can find, as on a healthy host. */
const ALL_PROBES = Object.values(Probe).reduce((bits, bit) => bits | bit, 0);

/** The probe of a kernel that offers everything but `bit`. */
const probeWithout = (bit: number) => () => ALL_PROBES & ~bit;

/** A host where everything is fine, in memory. */
function healthyHost(lines: string[]): Partial<DoctorProbes> {
  return {
    env: {},
    readConfigFile: noConfigFile,
    osRelease: () => "6.18.45-generic",
    readBtf: () => new Uint8Array(5 << 20),
    probe: () => ALL_PROBES,
    exists: () => true,
    mounts: () =>
      new Map([
        ["/sys/kernel/tracing", "tracefs"],
        ["/sys/fs/bpf", "bpf"],
        ["/sys/fs/cgroup", "cgroup2"],
      ]),
    capabilities: () => CAP_BPF | CAP_PERFMON | CAP_NET_ADMIN,
    memlockLimit: () => 8 << 20,
    bpfStatsEnabled: () => false,
    loadLibrary: () => "/opt/flowexporter/libflowexporter.so",
    instanceLock: () => ({ held: false }),
    pinnedCaptures: () => [],
    otherVersionCaptures: () => [],
    readCertificate: () => Promise.resolve(identity(new Date(NOW.getTime() + 90 * DAY_MS))),
    collectorTransport: () =>
      Promise.resolve({ status: 405, headers: new Headers(), body: new Uint8Array(0) }),
    dirState: () => Promise.resolve({ state: "writable" }),
    now: () => NOW,
    print: (line) => lines.push(line),
  };
}

Deno.test("runDoctor() passes a healthy host and says it is ready", async () => {
  const lines: string[] = [];
  const code = await runDoctor(
    ["--collector-url", "http://collector.test/v1/batches"],
    healthyHost(lines),
  );
  assert.equal(code, 0, lines.join("\n"));
  const report = parseReport(lines);
  for (const [name, { status }] of report) assert.equal(status, "pass", name);
  assert.equal(
    report.get("collector")?.detail,
    "http://collector.test/v1/batches answered HTTP 405 (reachable)",
  );
  assert.equal(report.get("tracepoint")?.detail, "sock:inet_sock_set_state, attached as tp_btf");
  assert.equal(
    report.get("sock_ops")?.detail,
    "sock_ops on cgroup /sys/fs/cgroup follows every socket there (never skipped under load)",
  );
  assert.equal(
    lines.at(-1),
    "flowexporter doctor: ready (20 passed, 0 warnings, 0 failed, 0 skipped)",
  );
});

Deno.test("runDoctor() warns, without failing, when the kernel times every BPF program run", async () => {
  const lines: string[] = [];
  const code = await runDoctor([], { ...healthyHost(lines), bpfStatsEnabled: () => true });
  assert.equal(code, 0, lines.join("\n"));
  assert.deepEqual(parseReport(lines).get("bpf_stats"), {
    status: "warn",
    detail:
      "/proc/sys/kernel/bpf_stats_enabled is 1: the kernel times every BPF program run, the agent's 20 or so per connection too (write 0 to it once profiling is done)",
  });
});

Deno.test("runDoctor() fails a host that cannot run the agent, saying what to do", async () => {
  const lines: string[] = [];
  const code = await runDoctor(["--cert-path", "/etc/x/id.pem"], {
    ...healthyHost(lines),
    osRelease: () => "5.4.0-150-generic",
    readBtf: () => {
      throw new Deno.errors.NotFound("No such file or directory (os error 2)");
    },
    exists: (path) => path === "/run",
    mounts: () => new Map(),
    capabilities: () => 0n,
    loadLibrary: () => {
      throw new NativeLoadError(
        "Cannot load libflowexporter.so (run make build, or set FLOWEXPORTER_LIB)",
      );
    },
    probe: () => {
      throw new NativeLoadError(
        "Cannot load libflowexporter.so (run make build, or set FLOWEXPORTER_LIB)",
      );
    },
    readCertificate: () =>
      Promise.reject(
        new CertificateError("expired at 2025-12-01T00:00:00.000Z (renew it)", "/etc/x/id.pem"),
      ),
    dirState: () => Promise.resolve({ state: "unusable", problem: "read-only file system" }),
  });
  assert.equal(code, 1);
  const report = parseReport(lines);
  const expect: Record<string, [string, RegExp]> = {
    kernel: ["warn", /^Linux 5\.4\.0-150-generic: no tp_btf before 5\.5/],
    btf: [
      "fail",
      /^Cannot read kernel BTF at \/sys\/kernel\/btf\/vmlinux: .*CONFIG_DEBUG_INFO_BTF=y/,
    ],
    ringbuf: [
      "warn",
      /^cannot tell \(the native library could not be loaded to probe the kernel \(see library\)\): without a BPF ring buffer \(Linux 5\.8\+\) the agent falls back to the perf buffer/,
    ],
    clock: ["warn", /^cannot tell \(the native library .*\): flow times use CLOCK_MONOTONIC/],
    tracepoint: ["fail", /^cannot tell \(the native library could not be loaded/],
    sock_ops: ["warn", /^no cgroup v2 mounted: tracepoints alone capture/],
    seeding: ["warn", /^cannot tell \(the native library .*\): sockets already open/],
    interim: ["warn", /^cannot tell \(the native library .*\): long-lived connections get no/],
    sweep: ["warn", /^cannot tell \(the native library .*\): a close and destroy the kernel runs/],
    tracefs: [
      "warn",
      /the agent mounts it at start \(or run: mount -t tracefs nodev \/sys\/kernel\/tracing\)/,
    ],
    bpffs: ["warn", /mount -t bpf nodev \/sys\/fs\/bpf/],
    privileges: ["fail", /^missing CAP_BPF and CAP_PERFMON \(run as root/],
    memlock: ["warn", /^RLIMIT_MEMLOCK 8\.0 MiB and BPF maps count against it before Linux 5\.11/],
    library: ["fail", /^Cannot load libflowexporter\.so/],
    certificate: ["fail", /^Cannot use certificate \/etc\/x\/id\.pem: expired at/],
    collector: ["skip", /^not configured/],
    spool: [
      "fail",
      /^Cannot use spool directory \/var\/lib\/flowexporter\/spool: read-only file system/,
    ],
  };
  for (const [name, [status, detail]] of Object.entries(expect)) {
    const got = report.get(name);
    assert.equal(got?.status, status, `${name}: ${got?.detail}`);
    assert.match(got!.detail, detail, name);
  }
  assert.match(
    lines.at(-1)!,
    /^flowexporter doctor: not ready \(\d+ passed, 10 warnings, 6 failed, 1 skipped\)$/,
  );
});

Deno.test("runDoctor() fails a kernel the probe finds without the tp_btf tracepoint", async () => {
  const lines: string[] = [];
  const code = await runDoctor([], {
    ...healthyHost(lines),
    probe: probeWithout(Probe.tpBtf),
  });
  assert.equal(code, 1);
  assert.deepEqual(parseReport(lines).get("tracepoint"), {
    status: "fail",
    detail:
      "no BTF-typed sock:inet_sock_set_state tracepoint (needs Linux 5.5+ with CONFIG_TRACEPOINTS)",
  });
});

Deno.test("runDoctor() reports what the shim's probe found, as the agent would act on it", async (t) => {
  const report = async (probes: Partial<DoctorProbes>) => {
    const lines: string[] = [];
    const code = await runDoctor([], { ...healthyHost(lines), ...probes });
    return { code, report: parseReport(lines) };
  };
  await t.step("no ring buffer: the perf buffer", async () => {
    const { code, report: r } = await report({ probe: probeWithout(Probe.ringbuf) });
    assert.equal(code, 0);
    assert.equal(r.get("ringbuf")?.status, "warn");
    assert.match(r.get("ringbuf")!.detail, /^no BPF ring buffer \(Linux 5\.8\+\): the agent falls/);
    assert.match(r.get("sweep")!.detail, /^no sweep with the perf buffer/);
  });
  await t.step("no bpf_ktime_get_boot_ns: CLOCK_MONOTONIC", async () => {
    const { report: r } = await report({ probe: probeWithout(Probe.bootNs) });
    assert.match(r.get("clock")!.detail, /^no bpf_ktime_get_boot_ns \(Linux 5\.8\+\): flow times/);
  });
  await t.step("a kernel whose TCP iterator has CVE-2026-74714: seeding warns", async () => {
    const { code, report: r } = await report({ osRelease: () => "6.18.44-1-amd64" });
    assert.equal(code, 0);
    assert.equal(r.get("seeding")?.status, "warn");
    assert.match(
      r.get("seeding")!.detail,
      /^Linux 6\.18\.44-1-amd64 has CVE-2026-74714: .* \(fixed in 6\.18\.45 and later\): update the kernel, or set no_seed/,
    );
    const off = await report({ osRelease: () => "6.18.44", env: { FLOWEXPORTER_NO_SEED: "1" } });
    assert.equal(off.report.get("seeding")?.status, "skip");
  });
  await t.step("no TCP iterator: no seeding", async () => {
    const { report: r } = await report({ probe: probeWithout(Probe.iterTcp) });
    assert.match(r.get("seeding")!.detail, /^no TCP socket iterator \(Linux 5\.9\+\)/);
    assert.equal(r.get("interim")?.status, "pass");
  });
  await t.step("no map walk from an iterator: no sweep, no interim records", async () => {
    const { report: r } = await report({ probe: probeWithout(Probe.mapWalk) });
    assert.equal(r.get("interim")?.status, "warn");
    assert.match(
      r.get("interim")!.detail,
      /^no map walk from an iterator \(Linux 5\.13\+\): long-lived/,
    );
    assert.equal(r.get("sweep")?.status, "warn");
    assert.match(
      r.get("sweep")!.detail,
      /^no map walk from an iterator \(Linux 5\.13\+\): a close/,
    );
  });
  await t.step("no kernel BTF: nothing can be told, and BTF itself fails", async () => {
    const { code, report: r } = await report({
      probe: () => 0,
      readBtf: () => {
        throw new Deno.errors.NotFound("No such file or directory (os error 2)");
      },
    });
    assert.equal(code, 1);
    assert.equal(r.get("btf")?.status, "fail");
    assert.deepEqual(r.get("tracepoint"), {
      status: "fail",
      detail: "cannot tell (no kernel BTF)",
    });
    assert.match(r.get("ringbuf")!.detail, /^cannot tell \(no kernel BTF\)/);
  });
  await t.step(
    "without the privileges to load BPF, map and program probes are not trusted",
    async () => {
      const { report: r } = await report({
        probe: () => Probe.btf | Probe.tpBtf,
        capabilities: () => 0n,
      });
      assert.match(
        r.get("ringbuf")!.detail,
        /^cannot tell \(probing needs the privileges to load BPF \(run doctor as root\)\)/,
      );
      assert.equal(r.get("tracepoint")?.status, "pass", "BTF answers that one without privileges");
    },
  );
});

Deno.test("runDoctor() warns when sock_ops cannot follow sockets, saying why", async (t) => {
  const sockOps = async (args: string[], probes: Partial<DoctorProbes>) => {
    const lines: string[] = [];
    const code = await runDoctor(args, { ...healthyHost(lines), ...probes });
    assert.equal(code, 0, "tracepoints alone still capture: ready, with a warning");
    const got = parseReport(lines).get("sock_ops")!;
    assert.equal(got.status, "warn");
    assert.match(got.detail, /: tracepoints alone capture: a close the kernel skips/);
    return got.detail;
  };
  await t.step("an empty cgroup_path turns it off", async () => {
    assert.match(await sockOps(["--cgroup-path", ""], {}), /^turned off by an empty cgroup_path/);
  });
  await t.step("no cgroup v2 mounted", async () => {
    const mounts = () => new Map([["/sys/kernel/tracing", "tracefs"], ["/sys/fs/bpf", "bpf"]]);
    assert.match(await sockOps([], { mounts }), /^no cgroup v2 mounted/);
  });
  await t.step("a kernel the probe finds without sock_ops support", async () => {
    assert.match(
      await sockOps([], { probe: probeWithout(Probe.sockops) }),
      /^no bpf_skc_to_tcp_sock for sock_ops \(Linux 5\.9\+\)/,
    );
  });
  await t.step("no CAP_NET_ADMIN", async () => {
    const capabilities = () => CAP_BPF | CAP_PERFMON;
    assert.match(await sockOps([], { capabilities }), /^missing CAP_NET_ADMIN/);
  });
  await t.step("a cgroup_path given is the one followed", async () => {
    const lines: string[] = [];
    await runDoctor(["--cgroup-path", "/sys/fs/cgroup/system.slice"], healthyHost(lines));
    assert.deepEqual(parseReport(lines).get("sock_ops"), {
      status: "pass",
      detail:
        "sock_ops on cgroup /sys/fs/cgroup/system.slice follows every socket there (never skipped under load)",
    });
  });
});

Deno.test("runDoctor() warns about a capture left pinned with no agent running", async () => {
  const lines: string[] = [];
  const asked: string[] = [];
  const code = await runDoctor(["--pin-dir", "/sys/fs/bpf/fe-test"], {
    ...healthyHost(lines),
    pinnedCaptures: (pinDir) => {
      asked.push(pinDir);
      return [`${pinDir}/capture-v1`];
    },
  });
  assert.equal(code, 0);
  assert.deepEqual(asked, ["/sys/fs/bpf/fe-test"]);
  const instance = parseReport(lines).get("instance")!;
  assert.equal(instance.status, "warn");
  assert.match(
    instance.detail,
    /^no agent running, but BPF programs it left attached capture into \/sys\/fs\/bpf\/fe-test\/capture-v1 \(.*flowexporter detach --pin-dir \/sys\/fs\/bpf\/fe-test to end them\)$/,
  );
});

Deno.test("runDoctor() does not warn about a pinned capture while its agent runs", async () => {
  const lines: string[] = [];
  const code = await runDoctor([], {
    ...healthyHost(lines),
    instanceLock: () => ({ held: true, pid: 4242 }),
    pinnedCaptures: (pinDir) => [`${pinDir}/capture-v1`],
  });
  assert.equal(code, 0);
  assert.deepEqual(parseReport(lines).get("instance"), {
    status: "pass",
    detail: "an agent is running (pid 4242): lock /run/flowexporter.lock is held",
  });
});

Deno.test("runDoctor() warns while a capture of another version runs beside the agent's", async () => {
  const lines: string[] = [];
  const code = await runDoctor(["--pin-dir", "/sys/fs/bpf/fe-test"], {
    ...healthyHost(lines),
    instanceLock: () => ({ held: true, pid: 4242 }),
    otherVersionCaptures: (pinDir) => [`${pinDir}/capture-v0`],
  });
  assert.equal(code, 0);
  const instance = parseReport(lines).get("instance")!;
  assert.equal(instance.status, "warn");
  assert.match(
    instance.detail,
    /^an agent is running \(pid 4242\): lock \S+ is held, but a capture of another agent version still runs beside its own: \/sys\/fs\/bpf\/fe-test\/capture-v0 \(.*restart the agent to try again\)$/,
  );
});

Deno.test("runDoctor() treats a missing default certificate as a warning, and a near expiry too", async (t) => {
  await t.step("no certificate at the default path", async () => {
    const lines: string[] = [];
    const missing = new CertificateError("no such file", "/etc/flowexporter/identity.pem", {
      cause: new Deno.errors.NotFound("gone"),
    });
    const code = await runDoctor([], {
      ...healthyHost(lines),
      readCertificate: () => Promise.reject(missing),
    });
    assert.equal(code, 0);
    assert.equal(parseReport(lines).get("certificate")?.status, "warn");
  });
  await t.step("a certificate expiring in three days", async () => {
    const lines: string[] = [];
    const soon = identity(new Date(NOW.getTime() + 3.5 * DAY_MS));
    const code = await runDoctor([], {
      ...healthyHost(lines),
      readCertificate: () => Promise.resolve(soon),
    });
    assert.equal(code, 0);
    assert.match(
      parseReport(lines).get("certificate")!.detail,
      /expires in 3 days .*\(renew it\)$/,
    );
  });
});

Deno.test("runDoctor() checks a real collector on loopback: reachable, refusing, absent", async (t) => {
  let status = 405;
  const seen: string[] = [];
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    seen.push(`${req.method} ${req.headers.get("authorization")}`);
    return new Response(null, { status });
  });
  const url = `http://127.0.0.1:${server.addr.port}/v1/batches`;
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-doctor-" });
  try {
    await Deno.writeTextFile(`${dir}/token`, "s3cret\n");
    const run = async (...args: string[]) => {
      const lines: string[] = [];
      const { collectorTransport: _, ...probes } = healthyHost(lines);
      const code = await runDoctor(["--collector-url", url, ...args], probes);
      return { code, collector: parseReport(lines).get("collector")! };
    };
    await t.step("a HEAD with the bearer token is answered: reachable", async () => {
      const { code, collector } = await run("--token-file", `${dir}/token`);
      assert.equal(code, 0);
      assert.deepEqual(collector, {
        status: "pass",
        detail: `${url} answered HTTP 405 (reachable)`,
      });
      assert.deepEqual(seen, ["HEAD Bearer s3cret"]);
    });
    await t.step("a 401 means the credentials are wrong", async () => {
      status = 401;
      const { code, collector } = await run();
      assert.equal(code, 1);
      assert.equal(collector.status, "fail");
      assert.match(collector.detail, /refused the credentials: HTTP 401 \(check token_file/);
    });
    await t.step("a missing token file fails before any request", async () => {
      const { collector } = await run("--token-file", `${dir}/missing`);
      assert.equal(collector.status, "fail");
      assert.match(collector.detail, /Cannot read bearer token file .*missing: no such file/);
    });
    await t.step("a port nobody listens on is unreachable", async () => {
      const { host, port } = unreachableEndpoint();
      const lines: string[] = [];
      const { collectorTransport: _, ...probes } = healthyHost(lines);
      const code = await runDoctor(["--collector-url", `http://${host}:${port}/`], probes);
      assert.equal(code, 1);
      assert.equal(
        parseReport(lines).get("collector")!.detail.startsWith(
          `Cannot reach http://${host}:${port}/: `,
        ),
        true,
        parseReport(lines).get("collector")!.detail,
      );
      assert.match(parseReport(lines).get("collector")!.detail, /\(check the URL/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runDoctor() returns 2 with one line for invalid options", async () => {
  const lines: string[] = [];
  const code = await runDoctor(["--poll-ms", "0"], healthyHost(lines));
  assert.equal(code, 2);
  assert.deepEqual(lines, [
    'flowexporter: Invalid --poll-ms "0": expected an integer from 1 to 60000',
  ]);
});

Deno.test({
  name: "runDoctor() finds this machine ready with its real probes",
  ignore: !IS_ROOT && !Deno.env.get("CI"),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "flowexporter-doctor-" });
    try {
      const lines: string[] = [];
      // Paths of this test's own; the pin directory does not exist, so no capture is pinned there.
      const pinDir = `/sys/fs/bpf/flowexporter-doctor-${crypto.randomUUID().slice(0, 8)}`;
      const code = await runDoctor(
        [
          "--spool-dir",
          `${dir}/spool`,
          "--lock-file",
          `${dir}/flowexporter.lock`,
          "--cert-path",
          `${dir}/none.pem`,
          "--pin-dir",
          pinDir,
        ],
        { env: {}, readConfigFile: noConfigFile, print: (line) => lines.push(line) },
      );
      const report = parseReport(lines);
      const failed = [...report].filter(([, r]) => r.status === "fail").map(([name]) => name);
      // The certificate path was set explicitly and does not exist: the one expected failure.
      assert.deepEqual(failed, ["certificate"], lines.join("\n"));
      assert.equal(code, 1);
      const ready = ["btf", "tracepoint", "sock_ops", "privileges", "library", "spool", "instance"];
      for (const name of ready) {
        assert.equal(report.get(name)?.status, "pass", `${name}: ${report.get(name)?.detail}`);
      }
      assert.equal(
        report.get("spool")?.detail,
        `${dir}/spool does not exist yet; the agent creates it in ${dir}`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
