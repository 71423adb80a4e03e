/**
 * The whole pipeline on the real kernel: agent → spool → collector, with the
 * collector attributing the remote side, surviving a crash, a restart of the
 * agent with a full spool, and a spool at its cap.
 */
import assert from "node:assert/strict";
import { formatIp } from "../lib/map_layout.ts";
import { decodeSpooledBatch, isSpooledBatch } from "./_spool_files.ts";
import type { FlowJson } from "../lib/json_lines.ts";
import { AgentProcess, delay, kernelTest, setIp } from "./_agent.ts";
import { CollectorProcess, storedLoss } from "./_collector.ts";
import { churn, exchange, namedServerPort, uniqueLoopbackAddress } from "./_traffic.ts";

/**
 * Waits until `check` holds, polling every `everyMs`; fails with `what` and what `seen`
 * says at the deadline.
 */
async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  { timeoutMs = 30_000, everyMs = 100, seen = (): string | Promise<string> => "" } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${await seen()}`);
    }
    await delay(everyMs);
  }
}

/** Waits until the collector holds `count` flows for `ip` (polling), then returns them. */
async function collected(
  collector: CollectorProcess,
  ip: string,
  count: number,
  timeoutMs = 30_000,
): Promise<Record<string, unknown>[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const flows = await collector.flows({ ip });
    if (flows.length >= count || Date.now() > deadline) return flows;
    await delay(200);
  }
}

/** The flows of `ip` in the batches waiting in `spoolDir` (files the agent removes may vanish). */
async function spooledFlows(spoolDir: string, ip: string): Promise<number> {
  let n = 0;
  for (const entry of Deno.readDirSync(spoolDir)) {
    if (!entry.isFile || !isSpooledBatch(entry.name)) continue;
    const path = `${spoolDir}/${entry.name}`;
    let body: Uint8Array;
    try {
      body = await Deno.readFile(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue;
      throw error;
    }
    for (const f of (await decodeSpooledBatch(path, body)).flows) {
      if (formatIp(f.localIp) === ip || formatIp(f.remoteIp) === ip) n++;
    }
  }
  return n;
}

/** The records of flows with one end on `ip`. */
function of(ip: string): (r: FlowJson) => boolean {
  return (r) => r.local_ip === ip || r.remote_ip === ip;
}

kernelTest("the collector attributes both ends of flows between two workloads", async () => {
  const dir = await Deno.makeTempDir();
  await using collector = await CollectorProcess.start(`${dir}/flows.db`);
  await using agent = await AgentProcess.start([
    "--collector-url",
    collector.batchesUrl,
    "--batch-interval",
    "1s",
  ]);
  // Addresses of this test's own: no other flow on the host has an end there.
  const clientIp = uniqueLoopbackAddress();
  const serverIp = uniqueLoopbackAddress();
  await setIp(agent.pinDir, clientIp, "workload-client");
  await setIp(agent.pinDir, serverIp, "workload-server");
  const { default: net } = await import("node:net");
  const server = net.createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, serverIp, r));
  const port = (server.address() as { port: number }).port;
  const client = net.connect({ host: serverIp, port, localAddress: clientIp });
  await new Promise((r) => client.on("close", r).resume());
  await new Promise<void>((r) => server.close(() => r()));

  const flows = await collected(collector, serverIp, 2);
  assert.equal(flows.length, 2, JSON.stringify(flows));
  const out = flows.find((f) => f.local_ip === clientIp)!;
  const inn = flows.find((f) => f.local_ip === serverIp)!;
  assert.equal(out.local_workload_id, "workload-client");
  assert.equal(out.remote_workload_id, "workload-server");
  assert.equal(out.attribution, "attributed");
  assert.equal(inn.local_workload_id, "workload-server");
  assert.equal(inn.remote_workload_id, "workload-client");
  assert.equal(inn.attribution, "attributed");
  await agent.stop();
  await Deno.remove(dir, { recursive: true });
});

kernelTest("every record arrives exactly once across a collector crash", async () => {
  const dir = await Deno.makeTempDir();
  let collector = await CollectorProcess.start(`${dir}/flows.db`);
  await using agent = await AgentProcess.start([
    "--collector-url",
    collector.batchesUrl,
    "--batch-interval",
    "1s",
  ]);
  const host = uniqueLoopbackAddress();
  await churn(host, 40);
  // Delivered before the crash.
  assert.equal((await collected(collector, host, 80)).length, 80);
  await collector.kill();
  await churn(host, 40);
  // Batches close while the collector is down: spooled, and retried until it is back.
  const spool = `${agent.workDir}/spool`;
  await until(
    "the agent to spool the flows it captured while the collector was down",
    async () => (await spooledFlows(spool, host)) >= 80,
    {
      seen: async () =>
        `: ${await spooledFlows(spool, host)} in the spool, ${
          agent.records.filter(of(host)).length
        } of 160 captured; log:\n${agent.stderrLines.join("\n")}`,
    },
  );
  // Where the agent sends: the same address and port after the crash.
  collector = await CollectorProcess.start(`${dir}/flows.db`, { address: collector.address });
  await churn(host, 40);
  const stored = await collected(collector, host, 240);
  assert.equal(await agent.stop(), 0);
  const fromAgent = agent.records.filter(of(host));
  assert.equal(fromAgent.length, 240, "2 sockets × 120 connections captured");
  assert.equal(stored.length, 240);
  // The very flows the agent captured, each stored once.
  const ids = (flows: { flow_id?: unknown }[]) => flows.map((f) => f.flow_id).sort();
  assert.deepEqual(ids(stored), ids(fromAgent));
  assert.equal(new Set(ids(stored)).size, 240, "no flow stored twice");
  await collector.stop();
  await Deno.remove(dir, { recursive: true });
});

kernelTest("an agent restarted with a full spool replays it", async () => {
  const dir = await Deno.makeTempDir();
  // Named before the collector starts: an address of its own, a port below the ephemeral range.
  const address = { hostname: uniqueLoopbackAddress(), port: namedServerPort() };
  const url = `http://${address.hostname}:${address.port}/v1/batches`;
  const spool = `${dir}/spool`;
  const flags = ["--collector-url", url, "--batch-interval", "1s", "--spool-dir", spool];
  const first = await AgentProcess.start([...flags, "--shutdown-deadline", "1s"]);
  const host = uniqueLoopbackAddress();
  await churn(host, 25);
  // Captured before the stop, which spools the open window.
  await first.waitForRecords(of(host), 50);
  assert.equal(await first.stop(), 0);
  assert.equal(await spooledFlows(spool, host), 50, "the first agent left its flows in the spool");

  await using collector = await CollectorProcess.start(`${dir}/flows.db`, { address });
  await using second = await AgentProcess.start(flags);
  const stored = await collected(collector, host, 50);
  assert.equal(stored.length, 50);
  assert.deepEqual(
    stored.map((f) => f.flow_id).sort(),
    first.records.filter(of(host)).map((r) => r.flow_id).sort(),
    "the flows the first agent captured, each once",
  );
  await second.stop();
  await Deno.remove(dir, { recursive: true });
});

kernelTest(
  "a spool at its cap evicts the oldest batches, counts them and keeps running",
  async () => {
    const dir = await Deno.makeTempDir();
    // Named before the collector starts: an address of its own, a port below the ephemeral range.
    const address = { hostname: uniqueLoopbackAddress(), port: namedServerPort() };
    const url = `http://${address.hostname}:${address.port}/v1/batches`;
    await using agent = await AgentProcess.start([
      "--collector-url",
      url,
      "--batch-interval",
      "1s",
      "--spool-max-bytes",
      "65536",
    ]);
    // ~60 bytes per flow on the wire: a few thousand flows overflow 64 KiB. Churn until the
    // agent evicts (windows close every second, each a batch of its own).
    const host = uniqueLoopbackAddress();
    await until(
      "the agent to evict a batch",
      async () => {
        if (agent.stderrLines.some((l) => /evict/i.test(l))) return true;
        await churn(host, 1500);
        return false;
      },
      { timeoutMs: 60_000, everyMs: 0, seen: () => `; log:\n${agent.stderrLines.join("\n")}` },
    );
    await using collector = await CollectorProcess.start(`${dir}/flows.db`, { address });
    await until(
      "the collector to store a batch reporting the evictions",
      () => storedLoss(collector.db, "spool_evictions") > 0,
      { everyMs: 300 },
    );
    // Still capturing after the evictions.
    const x = await exchange("127.0.0.1", 10, 10, "client");
    await agent.waitForRecords(
      (r) => r.local_port === x.clientPort && r.remote_port === x.serverPort,
      1,
    );
    await agent.stop();
    await Deno.remove(dir, { recursive: true });
  },
);
