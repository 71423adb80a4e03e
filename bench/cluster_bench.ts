/**
 * Cluster collector throughput and cost per stage, on a local cluster (3 JetStream servers and
 * ClickHouse on loopback, collector/cluster/local_cluster.ts), replaying synthetic batches from
 * many hosts whose workloads call each other's servers.
 *
 *   deno run -A bench/cluster_bench.ts [--hosts 1000] [--batches-per-host 2] [--flows 200]
 *     [--reps 2] [--in-flight 4] [--settle-hosts 300] [--partitions 1] [--nats-servers 3]
 *
 * For 1 and then 2 collector nodes (each a process of its own, bench/_cluster_node.ts), each
 * repetition runs on empty streams and tables. Before each stage is measured, its nodes settle:
 * they handle the batches of `--settle-hosts` other hosts (the same shape, one batch of calls
 * each) untimed, so that the figures are a running node's, not those of a process that compiles
 * its code and reads the ownership log as it starts (`--settle-hosts 0` measures that):
 * - the stages one at a time, on the same batches: ingest (nodes that only validate and
 *   publish), attribution (nodes that only attribute what ingest left in the stream) and sink
 *   (nodes that only insert the attributed flows into ClickHouse); for each, wall time, flows/s,
 *   and CPU ms per 1000 flows of the nodes, of the three JetStream servers and of ClickHouse;
 * - end to end: nodes doing all of it while the batches arrive, until ClickHouse holds every flow.
 * `--partitions` splits the batch, held and output streams (streams.ts); the last column gives
 * the busiest JetStream server's share of JetStream's CPU, which with one partition is its
 * streams' leader's. `--nats-servers` runs more JetStream servers than the three replicas: one
 * partition's streams then live on three of them only.
 * Every figure of every repetition is printed; the summary gives the best and the worst.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createClient } from "@clickhouse/client";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startLocalCluster } from "../collector/cluster/local_cluster.ts";
import { ClickHouseStore } from "../collector/cluster/clickhouse_store.ts";
import { consumerPlaces, CONSUMERS } from "../collector/cluster/streams.ts";
import { clockTicksPerSecond, cpuTicks } from "./_proc.ts";
import { type FleetBatches, SyntheticFleet } from "./_cluster_fleet.ts";

const NODE = new URL("./_cluster_node.ts", import.meta.url).pathname;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    hosts: { type: "string", default: "1000" },
    "batches-per-host": { type: "string", default: "2" },
    flows: { type: "string", default: "200" },
    reps: { type: "string", default: "2" },
    // Per node: the collector's default max_concurrent_ingests. More only draws 503s, which
    // the bench retries at once where an agent would wait Retry-After.
    "in-flight": { type: "string", default: "4" },
    "settle-hosts": { type: "string", default: "300" },
    partitions: { type: "string", default: "1" },
    "nats-servers": { type: "string", default: "3" },
  },
});
const hosts = Number(values.hosts);
const batchesPerHost = Number(values["batches-per-host"]);
const flowsPerBatch = Number(values.flows);
const reps = Number(values.reps);
const inFlight = Number(values["in-flight"]);
const settleHosts = Number(values["settle-hosts"]);
const partitions = Number(values.partitions);
const hz = await clockTicksPerSecond();

const fleet = new SyntheticFleet(flowsPerBatch);

interface NodeProcess {
  url: string;
  pid: number;
  child: Deno.ChildProcess;
}

async function startNodes(
  n: number,
  natsUrls: string[],
  clickhouseUrl: string,
  work: string,
): Promise<NodeProcess[]> {
  return await Promise.all(Array.from({ length: n }, async (_, i) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", NODE, natsUrls.join(","), clickhouseUrl, work, `bench-${i}`],
        `${partitions}`,
      ],
      stdout: "piped",
      stderr: "inherit",
      stdin: "null",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`Bench node ${i} exited before it listened`);
      text += value;
    }
    reader.releaseLock();
    child.stdout.cancel().catch(() => {});
    return { url: text.trim(), pid: child.pid, child };
  }));
}

async function stopNodes(nodes: NodeProcess[]): Promise<void> {
  for (const node of nodes) node.child.kill("SIGTERM");
  await Promise.all(nodes.map((node) => node.child.status));
}

async function post(urls: string[], bodies: Uint8Array[]): Promise<void> {
  let next = 0;
  const lane = async (lane: number) => {
    for (let i = next++; i < bodies.length; i = next++) {
      for (let attempt = 0;; attempt++) {
        // Each lane posts to one node: no node gets more than `inFlight` at once.
        const response = await fetch(`${urls[lane % urls.length]}/v1/batches`, {
          method: "POST",
          body: bodies[i] as BodyInit,
          headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
        });
        await response.body?.cancel();
        if (response.status === 200) break;
        if (attempt > 1000) throw new Error(`Batch ${i} refused: ${response.status}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight * urls.length }, (_, i) => lane(i)));
}

const cluster = await startLocalCluster({ natsNodes: Number(values["nats-servers"]) });
const nc = await connect({ servers: cluster.natsUrls });
const jsm = await jetstreamManager(nc);
const clickhouse = createClient({ url: cluster.clickhouseUrl });

/** CPU ticks of the processes named, now. */
function ticks(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + cpuTicks(pid), 0);
}
const natsPids = () => Object.entries(cluster.pids()).filter(([n]) => /^n\d$/.test(n));
const clickhousePid = () => cluster.pids().clickhouse;

async function reset(): Promise<void> {
  for await (const stream of jsm.streams.names()) await jsm.streams.delete(stream);
  for (const table of ["flows", "revocations", "batches"]) {
    await clickhouse.command({ query: `DROP TABLE IF EXISTS ${table}` });
  }
}

/** Entries `consumer` has yet to handle, over every partition. */
async function lag(consumer: keyof typeof CONSUMERS): Promise<number> {
  let sum = 0;
  for (const place of consumerPlaces(partitions)) {
    if (place.consumer !== consumer) continue;
    const info = await jsm.consumers.info(place.stream, place.name);
    sum += info.num_pending + info.num_ack_pending;
  }
  return sum;
}

async function until(condition: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 600_000;
  while (!await condition()) {
    if (Date.now() > deadline) throw new Error("The bench stalled for 10 minutes");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

interface Stage {
  /** Flows the stage handled while measured. */
  flows: number;
  ms: number;
  nodeTicks: number;
  natsTicks: number;
  /** The JetStream server that spent the most, its ticks. */
  busiestNatsTicks: number;
  clickhouseTicks: number;
}

/**
 * Runs `body`, which resolves to the number of flows it saw handled, and measures wall time and
 * CPU of the nodes, JetStream and ClickHouse.
 */
async function measure(nodes: NodeProcess[], body: () => Promise<number>): Promise<Stage> {
  const nodePids = nodes.map((n) => n.pid);
  const nats = natsPids().map(([, pid]) => pid);
  const before = [ticks(nodePids), ticks(nats), cpuTicks(clickhousePid())];
  const natsBefore = nats.map(cpuTicks);
  const started = performance.now();
  const flows = await body();
  const ms = performance.now() - started;
  return {
    flows,
    ms,
    nodeTicks: ticks(nodePids) - before[0],
    natsTicks: ticks(nats) - before[1],
    busiestNatsTicks: Math.max(...nats.map((pid, i) => cpuTicks(pid) - natsBefore[i])),
    clickhouseTicks: cpuTicks(clickhousePid()) - before[2],
  };
}

const main = fleet.batches(0, hosts, batchesPerHost);
const settle = settleHosts > 1
  ? fleet.batches(hosts, settleHosts, 1)
  : { heartbeats: [], traffic: [], flows: 0 };
const mainBatches = main.heartbeats.length + main.traffic.length;
const total = main.flows + settle.flows;
/** Flows in the last `left` batches of `main` (posted heartbeats first, then traffic). */
const flowsOfLast = (left: number) =>
  Math.min(left, main.traffic.length) * flowsPerBatch + Math.max(0, left - main.traffic.length);
const bodyBytes = [...main.heartbeats, ...main.traffic].reduce((n, b) => n + b.length, 0);
console.error(
  `${hosts} hosts, ${mainBatches} batches, ${main.flows} flows, ${bodyBytes} bytes compressed ` +
    `(${(bodyBytes / main.flows).toFixed(1)} per flow); settling on ${settle.flows} flows of ` +
    `${settle.heartbeats.length} other hosts`,
);
const rows: string[][] = [];
const record = (nodes: number, rep: number, name: string, s: Stage) => {
  const perK = (t: number) => (t / hz * 1000 / (s.flows / 1000)).toFixed(1);
  rows.push([
    `${nodes}`,
    `${rep}`,
    name,
    (s.ms / 1000).toFixed(2),
    Math.round(s.flows / (s.ms / 1000)).toString(),
    perK(s.nodeTicks),
    perK(s.natsTicks),
    perK(s.clickhouseTicks),
    `${Math.round(s.busiestNatsTicks / s.natsTicks * 100)} %`,
  ]);
  console.error(rows.at(-1)!.join("\t"));
};
const postAll = async (urls: string[], set: FleetBatches) => {
  await post(urls, set.heartbeats);
  await post(urls, set.traffic);
};

try {
  for (const n of [1, 2]) {
    for (let rep = 1; rep <= reps; rep++) {
      await reset();
      let nodes = await startNodes(n, cluster.natsUrls, cluster.clickhouseUrl, "none");
      const urls = nodes.map((node) => node.url);
      await postAll(urls, settle);
      record(
        n,
        rep,
        "ingest",
        await measure(nodes, async () => {
          await postAll(urls, main);
          return main.flows;
        }),
      );
      await stopNodes(nodes);
      nodes = await startNodes(n, cluster.natsUrls, cluster.clickhouseUrl, "attribution");
      // The settling batches come first in the stream.
      await until(async () => await lag("attribution") <= mainBatches);
      record(
        n,
        rep,
        "attribution",
        await measure(nodes, async () => {
          const left = await lag("attribution");
          await until(async () => await lag("attribution") === 0 && await lag("hold") === 0);
          return flowsOfLast(left);
        }),
      );
      await stopNodes(nodes);
      nodes = await startNodes(n, cluster.natsUrls, cluster.clickhouseUrl, "sink");
      const store = await ClickHouseStore.open(cluster.clickhouseUrl, { readOnly: true });
      await until(async () => await lag("sink") <= mainBatches);
      record(
        n,
        rep,
        "sink",
        await measure(nodes, async () => {
          const stored = await store.countFlows();
          await until(async () => await lag("sink") === 0 && await store.countFlows() === total);
          return total - stored;
        }),
      );
      const attributed = (await store.flows({ attribution: "attributed", limit: -1 })).length;
      if (attributed !== total) {
        throw new Error(`${total - attributed} flows not attributed: the bench data is wrong`);
      }
      await stopNodes(nodes);
      await reset();
      nodes = await startNodes(n, cluster.natsUrls, cluster.clickhouseUrl, "attribution,sink");
      const all = nodes.map((node) => node.url);
      await postAll(all, settle);
      await until(async () => await store.countFlows() === settle.flows);
      record(
        n,
        rep,
        "end to end",
        await measure(nodes, async () => {
          await postAll(all, main);
          await until(async () => await store.countFlows() === total);
          return main.flows;
        }),
      );
      await store.close();
      await stopNodes(nodes);
    }
  }
} finally {
  await clickhouse.close();
  await nc.close();
  await cluster.close();
}

const header = [
  "nodes",
  "rep",
  "stage",
  "wall s",
  "flows/s",
  "node CPU ms/1k",
  "JetStream CPU ms/1k",
  "ClickHouse CPU ms/1k",
  "busiest JetStream server",
];
const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
const line = (r: string[]) => `| ${r.map((cell, c) => cell.padEnd(widths[c])).join(" | ")} |`;
console.log(line(header));
console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
for (const r of rows) console.log(line(r));
console.log();
console.log("Summary (best / worst of the repetitions):");
for (const n of [1, 2]) {
  for (const stage of ["ingest", "attribution", "sink", "end to end"]) {
    const mine = rows.filter((r) => r[0] === `${n}` && r[2] === stage);
    const rates = mine.map((r) => Number(r[4]));
    const cpu = mine.map((r) => Number(r[5]));
    console.log(
      `  ${n} node(s) ${stage.padEnd(11)} ${Math.max(...rates)} / ${
        Math.min(...rates)
      } flows/s; node CPU ${Math.min(...cpu)} / ${Math.max(...cpu)} ms per 1000 flows`,
    );
  }
}
