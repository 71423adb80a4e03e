import assert from "node:assert/strict";
import { type DoctorProbes, runDoctor } from "../cli/doctor.ts";
import { CertificateError, type CertificateIdentity } from "../identity/host_identity.ts";
import { IS_ROOT } from "./_agent.ts";

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

/** A host where everything is fine, in memory. */
function healthyHost(lines: string[]): Partial<DoctorProbes> {
  return {
    env: {},
    readConfigFile: noConfigFile,
    osRelease: () => "6.8.0-generic",
    readBtf: () =>
      new TextEncoder().encode(
        "\0bpf_ringbuf\0BPF_FUNC_ktime_get_boot_ns\0btf_trace_inet_sock_set_state\0bpf_iter__tcp\0",
      ),
    exists: () => true,
    mounts: () => new Map([["/sys/kernel/tracing", "tracefs"], ["/sys/fs/bpf", "bpf"]]),
    capabilities: () => (1n << 39n) | (1n << 38n),
    memlockLimit: () => 8 << 20,
    loadLibrary: () => "/opt/flowexporter/libflowexporter.so",
    instanceLock: () => ({ held: false }),
    readCertificate: () => Promise.resolve(identity(new Date(NOW.getTime() + 90 * DAY_MS))),
    fetch: () => Promise.resolve(new Response(null, { status: 405 })),
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
  assert.equal(
    lines.at(-1),
    "flowexporter doctor: ready (16 passed, 0 warnings, 0 failed, 0 skipped)",
  );
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
      throw new Error("Cannot load libflowexporter.so (run make build, or set FLOWEXPORTER_LIB)");
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
      /^no BPF ring buffer \(Linux 5\.8\+\): the agent falls back to the perf buffer/,
    ],
    clock: ["warn", /^cannot tell without BTF: flow times use CLOCK_MONOTONIC/],
    tracepoint: ["fail", /^no sock:inet_sock_set_state tracepoint/],
    seeding: ["warn", /^cannot tell without BTF/],
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
    /^flowexporter doctor: not ready \(\d+ passed, 7 warnings, 6 failed, 1 skipped\)$/,
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
      const { fetch: _, ...probes } = healthyHost(lines);
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
      const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const closedPort = probe.addr.port;
      probe.close();
      const lines: string[] = [];
      const { fetch: _, ...probes } = healthyHost(lines);
      const code = await runDoctor(["--collector-url", `http://127.0.0.1:${closedPort}/`], probes);
      assert.equal(code, 1);
      assert.match(
        parseReport(lines).get("collector")!.detail,
        /^Cannot reach http:\/\/127\.0\.0\.1:\d+\/: .*\(check the URL/,
      );
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
      const code = await runDoctor(
        [
          "--spool-dir",
          `${dir}/spool`,
          "--lock-file",
          `${dir}/flowexporter.lock`,
          "--cert-path",
          `${dir}/none.pem`,
        ],
        { env: {}, readConfigFile: noConfigFile, print: (line) => lines.push(line) },
      );
      const report = parseReport(lines);
      const failed = [...report].filter(([, r]) => r.status === "fail").map(([name]) => name);
      // The certificate path was set explicitly and does not exist: the one expected failure.
      assert.deepEqual(failed, ["certificate"], lines.join("\n"));
      assert.equal(code, 1);
      for (const name of ["btf", "tracepoint", "privileges", "library", "spool", "instance"]) {
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
