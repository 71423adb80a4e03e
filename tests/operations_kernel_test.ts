/**
 * Operating the real agent: metrics after real flows, health, the
 * single-instance guard, doctor on this machine, a closed stdout.
 */
import assert from "node:assert/strict";
import { AgentProcess, kernelTest } from "./_agent.ts";
import { makeCertificate } from "./_certs.ts";
import { churn, namedServerPort, uniqueLoopbackAddress, unreachableEndpoint } from "./_traffic.ts";
import { decodeSpooledBatch, isSpooledBatch } from "./_spool_files.ts";
import { IP_WORKLOAD_MAX_ENTRIES, PORT_WORKLOAD_MAX_ENTRIES } from "../lib/map_layout.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** The value of a Prometheus sample line `name{labels} value`. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `no sample ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

kernelTest(
  "the metrics endpoint reports real flows, identity sources, maps and health",
  async () => {
    // The agent does not say which port it bound: name one, on an address of this test's own.
    const listen = `${uniqueLoopbackAddress()}:${namedServerPort()}`;
    await using _agent = await AgentProcess.start([
      "--metrics-listen",
      listen,
      "--output",
      "none",
    ]);
    await churn("127.0.0.1", 50);
    const url = `http://${listen}`;
    let text = "";
    const deadline = Date.now() + 10_000;
    do {
      text = await (await fetch(`${url}/metrics`)).text();
    } while (sample(text, "flowexporter_flows_captured_total") < 100 && Date.now() < deadline);
    assert.ok(
      sample(text, "flowexporter_flows_captured_total") >= 100,
      "2 records × 50 connections",
    );
    // No certificate and no map entries: every flow is of unknown identity.
    assert.ok(
      sample(text, 'flowexporter_records_by_identity_source_total{source="unknown"}') >= 100,
    );
    assert.equal(sample(text, "flowexporter_kernel_drops_total"), 0);
    assert.ok(
      sample(text, "flowexporter_flows_recovered_total") <=
        sample(text, "flowexporter_recursion_misses_total") +
          sample(text, "flowexporter_unfollowed_at_destroy_total") +
          sample(text, "flowexporter_flows_swept_total"),
      "a record is made at destroy only after a skipped close run, or for a socket nobody followed; or by the sweep",
    );
    assert.equal(
      sample(text, 'flowexporter_identity_map_capacity{map="ip_workload"}'),
      IP_WORKLOAD_MAX_ENTRIES,
    );
    assert.equal(
      sample(text, 'flowexporter_identity_map_capacity{map="port_workload"}'),
      PORT_WORKLOAD_MAX_ENTRIES,
    );
    assert.equal(sample(text, 'flowexporter_identity_map_entries{map="ip_workload"}'), 0);
    assert.ok(sample(text, "process_resident_memory_bytes") > 0);
    assert.match(text, /flowexporter_worker_lag_seconds_bucket/);
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal((await health.text()).trim(), "ok");
  },
);

kernelTest(
  "a second agent on the same host refuses to start and leaves the first one running",
  async () => {
    await using first = await AgentProcess.start();
    const second = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        MAIN,
        "run",
        "--lock-file",
        `${first.workDir}/lock`,
        "--pin-dir",
        first.pinDir,
        "--spool-dir",
        `${first.workDir}/spool2`,
        "--cert-path",
        `${first.workDir}/no-identity.pem`,
      ],
      env: { FLOWEXPORTER_CONFIG: "" },
      stdin: "null",
    }).output();
    assert.equal(second.code, 1);
    assert.match(
      new TextDecoder().decode(second.stderr),
      /Another flowexporter \(pid \d+\) is running/,
    );
    // The first agent still captures: its maps were not taken over.
    const port = await churn("127.0.0.1", 1);
    await first.waitForRecords((r) => r.remote_port === port || r.local_port === port, 2);
  },
);

kernelTest("doctor finds this machine ready and says so line by line", async () => {
  // Paths of this test's own: the default lock file, spool and pin directory belong to a real
  // agent that may run on this host.
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-doctor-" });
  const pinDir = `/sys/fs/bpf/flowexporter-none-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await makeCertificate(`${dir}/identity.pem`, { cn: "node-doctor", days: 90 });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        ...[
          "run",
          "--allow-all",
          MAIN,
          "doctor",
          "--pin-dir",
          pinDir,
        ],
        ...["--lock-file", `${dir}/lock`, "--spool-dir", `${dir}/spool`],
        ...["--cert-path", `${dir}/identity.pem`],
      ],
      env: { FLOWEXPORTER_CONFIG: "" },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, text + new TextDecoder().decode(out.stderr));
    const status = (name: string) =>
      new RegExp(`^(pass|warn|fail|skip) +${name} `, "m").exec(text)?.[1];
    for (
      const name of [
        "kernel",
        "btf",
        "ringbuf",
        "tracepoint",
        "sock_ops",
        "bpffs",
        "tracefs",
        "privileges",
        "library",
        "instance",
        "certificate",
        "spool",
      ]
    ) {
      assert.equal(status(name), "pass", `${name}:\n${text}`);
    }
    assert.match(text, /^pass +sock_ops +sock_ops on cgroup \S+ follows every socket there/m);
    assert.match(text, /^pass +instance +no agent running \(lock /m);
  } finally {
    await Deno.remove(pinDir).catch(() => {}); // doctor creates it to check bpffs
    await Deno.remove(dir, { recursive: true });
  }
});

kernelTest("a closed stdout stops the agent cleanly, with every record in the spool", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-stdout-" });
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const { child, log: started, restOfLog } = await startRun(dir, pinDir, [], []);
    // The reader goes away, as `flowexporter run | head -1` does once head has its line.
    await child.stdout.cancel();
    await churn("127.0.0.1", 20);
    const status = await child.status;
    const log = started + await restOfLog();
    assert.equal(status.code, 1, `exit 1 for a supervisor to see:\n${log}`);
    assert.match(log, /Cannot write flow records to stdout: .*; stopping/);
    const records = Number(/stopped \(records (\d+),/.exec(log)?.[1]);
    assert.ok(records >= 40, `${records} records: 2 per connection`);
    const spooled = [...Deno.readDirSync(`${dir}/spool`)].filter((e) => isSpooledBatch(e.name));
    assert.ok(spooled.length > 0, "the open window went to the spool");
    let flows = 0; // a minute boundary during the test makes two batches
    for (const file of spooled) {
      flows += (await decodeSpooledBatch(`${dir}/spool/${file.name}`)).flows.length;
    }
    assert.equal(flows, records, "every record captured is in the spool");
  } finally {
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

kernelTest("output auto writes JSON lines only when no collector is set", async () => {
  const flags = ["--output", "auto"];
  const { host, port } = unreachableEndpoint();
  const unreachable = `http://${host}:${port}/v1/batches`;
  for (
    const [collector, lines] of [[[], true], [["--collector-url", unreachable], false]] as const
  ) {
    await using agent = await AgentProcess.start([...flags, ...collector]);
    await churn("127.0.0.1", 5);
    assert.equal(await agent.stop(), 0);
    const captured = Number(/stopped \(records (\d+),/.exec(agent.stderrLines.join("\n"))?.[1]);
    assert.ok(captured >= 10, `${captured} records captured`);
    const what = collector.length ? "with a collector" : "without a collector";
    assert.equal(agent.records.length > 0, lines, `JSON lines ${what}: ${agent.records.length}`);
  }
});

kernelTest("run mounts bpffs before it makes its pin directory, on a host without it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-no-bpffs-" });
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  // A mount namespace of the agent's own, with /sys/fs/bpf unmounted: there it is a plain sysfs
  // folder, as on a host that never mounted bpffs. What the agent pins goes with the namespace.
  const withoutBpffs =
    'if mountpoint -q /sys/fs/bpf; then umount /sys/fs/bpf || exit 90; fi; exec "$@"';
  try {
    const { child, log, restOfLog } = await startRun(
      dir,
      pinDir,
      ["--output", "none"],
      ["unshare", "--mount", "--propagation", "private", "sh", "-c", withoutBpffs, "sh"],
    );
    child.kill("SIGINT");
    const status = await child.status;
    await child.stdout.cancel(); // --output none: nothing there
    const rest = await restOfLog();
    assert.equal(status.code, 0, log + rest);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * `flowexporter run` with `flags` and its paths in `dir`, started through `wrapper` (a command
 * that runs the rest, or none); resolves once the agent captures, with what it logged so far and
 * a function that reads the rest of its log, to its exit.
 */
async function startRun(dir: string, pinDir: string, flags: string[], wrapper: string[]) {
  const [program, ...wrapped] = [...wrapper, Deno.execPath()];
  const child = new Deno.Command(program, {
    args: [
      ...[...wrapped, "run", "--allow-all", MAIN, "run", ...flags, "--pin-dir", pinDir],
      ...["--lock-file", `${dir}/lock`, "--spool-dir", `${dir}/spool`],
      ...["--cert-path", `${dir}/none.pem`],
    ],
    stdout: "piped",
    stderr: "piped",
    env: { FLOWEXPORTER_CONFIG: "", NO_COLOR: "1" },
  }).spawn();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  while (!log.includes("capturing TCP flows")) {
    const { value, done } = await stderr.read();
    if (done) {
      await child.stdout.cancel();
      await child.status;
      assert.fail(`the agent exited before it captured:\n${log}`);
    }
    log += value;
  }
  const restOfLog = async () => {
    let rest = "";
    for (let r = await stderr.read(); !r.done; r = await stderr.read()) rest += r.value;
    return rest;
  };
  return { child, log, restOfLog };
}
