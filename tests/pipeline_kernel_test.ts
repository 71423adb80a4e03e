/**
 * The whole pipeline on the real kernel: agent → spool → collector, with the
 * collector attributing the remote side, surviving a crash, a restart of the
 * agent with a full spool, and a spool at its cap.
 */
import assert from "node:assert/strict";
import { AgentProcess, delay, kernelTest } from "./_agent.ts";
import { CollectorProcess, freePort, storedLoss } from "./_collector.ts";
import { churn, exchange } from "./_traffic.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function setIp(pinDir: string, ip: string, workload: string): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "identity", "set-ip", ip, workload, "--pin-dir", pinDir],
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
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

/** Identifies a flow without trusting the 4-tuple alone (ports are reused). */
function flowKey(f: Record<string, unknown>): string {
  return `${f.local_ip}:${f.local_port}>${f.remote_ip}:${f.remote_port}@${f.t_start_ns}`;
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
  await setIp(agent.pinDir, "127.0.1.11", "workload-client");
  await setIp(agent.pinDir, "127.0.1.12", "workload-server");
  const { default: net } = await import("node:net");
  const server = net.createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, "127.0.1.12", r));
  const port = (server.address() as { port: number }).port;
  const client = net.connect({ host: "127.0.1.12", port, localAddress: "127.0.1.11" });
  await new Promise((r) => client.on("close", r).resume());
  await new Promise<void>((r) => server.close(() => r()));

  const flows = await collected(collector, "127.0.1.12", 2);
  assert.equal(flows.length, 2, JSON.stringify(flows));
  const out = flows.find((f) => f.local_ip === "127.0.1.11")!;
  const inn = flows.find((f) => f.local_ip === "127.0.1.12")!;
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
  const port = freePort();
  let collector = await CollectorProcess.start(`${dir}/flows.db`, port);
  await using agent = await AgentProcess.start([
    "--collector-url",
    collector.batchesUrl,
    "--batch-interval",
    "1s",
  ]);
  const host = "127.0.1.21";
  await churn(host, 40);
  await delay(1500);
  await collector.kill();
  await churn(host, 40); // batches close while the collector is down: spooled, retried
  await delay(2500);
  collector = await CollectorProcess.start(`${dir}/flows.db`, port);
  await churn(host, 40);
  assert.equal(await agent.stop(), 0);
  const fromAgent = agent.records.filter((r) => r.local_ip === host || r.remote_ip === host);
  assert.equal(fromAgent.length, 240, "2 sockets × 120 connections captured");
  const stored = await collected(collector, host, 240);
  assert.equal(stored.length, 240);
  assert.equal(new Set(stored.map(flowKey)).size, 240, "no flow stored twice");
  await collector.stop();
  await Deno.remove(dir, { recursive: true });
});

kernelTest("an agent restarted with a full spool replays it", async () => {
  const dir = await Deno.makeTempDir();
  const port = freePort();
  const url = `http://127.0.0.1:${port}/v1/batches`;
  const spool = `${dir}/spool`;
  const flags = ["--collector-url", url, "--batch-interval", "1s", "--spool-dir", spool];
  const first = await AgentProcess.start([...flags, "--shutdown-deadline", "1s"]);
  const host = "127.0.1.31";
  await churn(host, 25);
  assert.equal(await first.stop(), 0);
  const spooled = [...Deno.readDirSync(spool)].filter((e) => e.isFile && e.name !== "state.json");
  assert.ok(spooled.length > 0, "the first agent left batches in the spool");

  await using collector = await CollectorProcess.start(`${dir}/flows.db`, port);
  await using second = await AgentProcess.start(flags);
  const stored = await collected(collector, host, 50);
  assert.equal(stored.length, 50);
  assert.equal(new Set(stored.map(flowKey)).size, 50);
  await second.stop();
  await Deno.remove(dir, { recursive: true });
});

kernelTest(
  "a spool at its cap evicts the oldest batches, counts them and keeps running",
  async () => {
    const dir = await Deno.makeTempDir();
    const port = freePort();
    const url = `http://127.0.0.1:${port}/v1/batches`;
    await using agent = await AgentProcess.start([
      "--collector-url",
      url,
      "--batch-interval",
      "1s",
      "--spool-max-bytes",
      "65536",
    ]);
    // ~60 bytes per flow on the wire: a few thousand flows overflow 64 KiB.
    for (let round = 0; round < 4; round++) {
      await churn("127.0.1.41", 1500);
      await delay(1100);
    }
    await agent.waitForLog(/evict/i, 10_000);
    await using collector = await CollectorProcess.start(`${dir}/flows.db`, port);
    const deadline = Date.now() + 30_000;
    while (storedLoss(collector.db, "spool_evictions") === 0 && Date.now() < deadline) {
      await delay(
        300,
      );
    }
    assert.ok(storedLoss(collector.db, "spool_evictions") > 0, "evictions reported in a batch");
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
