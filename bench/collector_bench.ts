/**
 * Collector ingest rate: validation (gunzip, CBOR decode, schema checks), attribution and
 * SQLite storage, on one core, for a synthetic cluster whose hosts call each other.
 *
 *   deno run -A bench/collector_bench.ts [--connections N] [--batch N] [--hosts N] [--dir DIR]
 *
 * `--dir` is where the databases go (a new temporary directory by default); `--dir /dev/shm`
 * takes the disk out of the figures.
 *
 * Prints a table: each stage alone (same batches, fresh state), the whole in-process ingest
 * (`Ingestor.ingestBody`), and end to end through HTTP on loopback, with the HTTP client in a
 * worker thread (the other core) so that the collector's thread does only collector work.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { gunzipSync, gzipSync } from "node:zlib";
import { Attributor } from "../collector/attributor.ts";
import { Ingestor } from "../collector/ingest.ts";
import { startCollector } from "../collector/server.ts";
import { FlowStore } from "../collector/store.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { parseBootId } from "../lib/flow_id.ts";
import {
  decodeBatch,
  type DecodedBatch,
  encodeBatch,
  encodeFlow,
  SCHEMA_VERSION,
} from "../lib/wire.ts";

const CLIENT = "collector-bench-client";

interface ClientJob {
  url: string;
  bodies: Uint8Array[];
  inFlight: number;
}

if ((globalThis as { name?: string }).name === CLIENT) {
  // Worker side: POST every body, `inFlight` at a time, and report the elapsed time.
  const scope = globalThis as unknown as Worker;
  scope.onmessage = async (event: MessageEvent<ClientJob>) => {
    const { url, bodies, inFlight } = event.data;
    let next = 0;
    let failures = 0;
    const started = performance.now();
    const lane = async () => {
      while (next < bodies.length) {
        const body = bodies[next++];
        const response = await fetch(`${url}/v1/batches`, {
          method: "POST",
          body: body as BodyInit,
          headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
        });
        if (response.status !== 200) failures++;
        await response.body?.cancel();
      }
    };
    await Promise.all(Array.from({ length: inFlight }, lane));
    scope.postMessage({ ms: performance.now() - started, failures });
  };
} else if (import.meta.main) {
  await main();
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      connections: { type: "string", default: "100000" },
      batch: { type: "string", default: "2000" },
      hosts: { type: "string", default: "50" },
      "pods-per-host": { type: "string", default: "20" },
      "in-flight": { type: "string", default: "4" },
      dir: { type: "string" },
    },
  });
  const connections = Number(values.connections);
  const batchSize = Number(values.batch);
  const hosts = Number(values.hosts);
  const podsPerHost = Number(values["pods-per-host"]);
  const inFlight = Number(values["in-flight"]);

  const { bodies, flowCount } = buildBatches(connections, hosts, podsPerHost, batchSize);
  const compressed = bodies.reduce((n, b) => n + b.length, 0);
  const cbors = bodies.map((b) => new Uint8Array(gunzipSync(b)));
  const raw = cbors.reduce((n, b) => n + b.length, 0);
  console.log(
    `${flowCount} flows (${connections} connections seen from both ends, ${hosts} hosts, ` +
      `${hosts * podsPerHost} workloads) in ${bodies.length} batches of ${batchSize}; ` +
      `${(raw / flowCount).toFixed(0)} B/flow CBOR, ${
        (compressed / flowCount).toFixed(0)
      } B/flow gzip`,
  );
  const rows: [string, number][] = [];
  const dir = await Deno.makeTempDir({ dir: values.dir, prefix: "collector_bench_" });
  try {
    rows.push(["gunzip", time(() => bodies.forEach((b) => gunzipSync(b)))]);
    let decoded: DecodedBatch[] = [];
    rows.push(["CBOR decode + schema validation", time(() => decoded = cbors.map(decodeBatch))]);
    rows.push(["attribution (in memory)", time(() => attributeAll(decoded))]);
    {
      using store = FlowStore.open(`${dir}/stages.db`);
      const ingestor = Ingestor.open(store);
      const ms = time(() => decoded.forEach((b) => ingestor.ingest(b)));
      rows.push(["attribution + SQLite (Ingestor.ingest)", ms]);
    }
    {
      using store = FlowStore.open(`${dir}/inprocess.db`);
      const ingestor = Ingestor.open(store);
      const ms = time(() =>
        bodies.forEach((b) => ingestor.ingestBody(new Uint8Array(gunzipSync(b))))
      );
      rows.push(["in-process total (gunzip + ingestBody)", ms]);
    }
    {
      const collector = await startCollector({
        dbPath: `${dir}/http.db`,
        port: 0,
        logger: () => {},
      });
      const worker = new Worker(import.meta.url, { type: "module", name: CLIENT });
      const done = new Promise<{ ms: number; failures: number }>((resolve) => {
        worker.onmessage = (event) => resolve(event.data);
      });
      worker.postMessage({ url: collector.url, bodies, inFlight } satisfies ClientJob);
      const { ms, failures } = await done;
      worker.terminate();
      const stored = collector.store.counts().flows;
      await collector.close();
      if (failures > 0 || stored !== flowCount) {
        throw new Error(`HTTP run lost batches: ${failures} failed, ${stored}/${flowCount} stored`);
      }
      rows.push([`HTTP end to end (loopback, ${inFlight} in flight)`, ms]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const total = rows.find(([name]) => name.startsWith("in-process"))![1];
  console.log("");
  console.log(
    `${"stage".padEnd(46)}${"ms".padStart(9)}${"flows/s".padStart(12)}${
      "of in-process".padStart(15)
    }`,
  );
  for (const [name, ms] of rows) {
    const rate = Math.round(flowCount / (ms / 1000));
    console.log(
      `${name.padEnd(46)}${ms.toFixed(0).padStart(9)}${rate.toLocaleString("en-US").padStart(12)}` +
        `${(ms / total * 100).toFixed(0).padStart(14)}%`,
    );
  }
  const http = rows.at(-1)![1];
  console.log("");
  console.log(
    `Target 170,000 flows/s: in-process ${ratio(flowCount, total)}, HTTP ${
      ratio(flowCount, http)
    } of it.`,
  );
}

function ratio(flows: number, ms: number): string {
  return `${(flows / (ms / 1000) / 170_000 * 100).toFixed(0)}%`;
}

function time(body: () => void): number {
  const started = performance.now();
  body();
  return performance.now() - started;
}

/** What the ingestor does in memory for each batch, without the database. */
function attributeAll(batches: readonly DecodedBatch[]): void {
  const attributor = new Attributor();
  let id = 0;
  for (const { header, flows } of batches) {
    attributor.observe(header.host.hostname, flows);
    for (const flow of flows) {
      const remote = attributor.endpoint(header.host.hostname, flow);
      if (attributor.attribute(remote).status === "pending") attributor.hold(id, remote, 0n);
      id++;
    }
    attributor.retry();
  }
}

/**
 * Connections between pods of different hosts, each reported by both ends (client outbound,
 * server inbound on port 8080), cut into per-host batches in time order.
 */
function buildBatches(
  connections: number,
  hosts: number,
  podsPerHost: number,
  batchSize: number,
): { bodies: Uint8Array[]; flowCount: number } {
  const baseNs = BigInt(Date.now()) * 1_000_000n - 600_000_000_000n;
  const perHost: FlowRecord[][] = Array.from({ length: hosts }, () => []);
  let seed = 42;
  const random = (n: number) => {
    seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
    return seed % n;
  };
  const ip = (host: number, pod: number) =>
    Uint8Array.of(10, 1 + (host >> 8), host & 0xff, 10 + pod);
  const workload = (host: number, pod: number) =>
    `k8s://team-${(host * podsPerHost + pod) % 37}/svc-${host}-${pod}-7d9f8c6b5-x2b`;
  // Each host's boot, and the cookie of its next socket.
  const bootIds = Array.from(
    { length: hosts },
    (_, h) => parseBootId(`${h.toString(16).padStart(8, "0")}-5eed-4b00-8000-000000000000`),
  );
  const cookies = Array.from({ length: hosts }, () => 4097n);
  for (let i = 0; i < connections; i++) {
    const client = random(hosts);
    const server = (client + 1 + random(hosts - 1)) % hosts;
    const cp = random(podsPerHost);
    const sp = random(podsPerHost);
    const tStartNs = baseNs + BigInt(i) * 3_000_000n; // 100k connections span 5 minutes
    const tEndNs = tStartNs + BigInt(1 + random(2000)) * 1_000_000n;
    const port = 32768 + (i % 28000);
    const common = {
      family: 4 as const,
      identitySource: "ip-map" as const,
      tStartNs,
      tEndNs,
      recordKind: "final" as const,
      seeded: false,
      closeState: "FIN_WAIT2",
      end: "normal" as const,
      error: 0,
      segsOut: 12,
      segsIn: 10,
      srttUs: 180 + random(200),
      minRttUs: 90,
      delivered: 8,
      lost: 0,
    };
    // One client in 20 retransmits a full-sized segment.
    const retrans = i % 20 === 0 ? 1 : 0;
    perHost[client].push({
      ...common,
      bootId: bootIds[client],
      cookie: cookies[client]++,
      localIp: ip(client, cp),
      localPort: port,
      remoteIp: ip(server, sp),
      remotePort: 8080,
      localWorkloadId: workload(client, cp),
      direction: "outbound",
      bytesSent: 900 + random(4000) + retrans * 1448,
      bytesRetrans: retrans * 1448,
      totalRetrans: retrans,
      bytesAcked: 900,
      bytesReceived: 2000 + random(90000),
    });
    perHost[server].push({
      ...common,
      bootId: bootIds[server],
      cookie: cookies[server]++,
      localIp: ip(server, sp),
      localPort: 8080,
      remoteIp: ip(client, cp),
      remotePort: port,
      localWorkloadId: workload(server, sp),
      direction: "inbound",
      bytesSent: 2000 + random(90000),
      bytesRetrans: 0,
      totalRetrans: 0,
      bytesAcked: 2000,
      bytesReceived: 900 + random(4000),
    });
  }
  // Cut each host's flows into batches, then interleave hosts by batch start time.
  const batches: { startNs: bigint; body: Uint8Array }[] = [];
  perHost.forEach((flows, h) => {
    for (let at = 0, seq = 1; at < flows.length; at += batchSize, seq++) {
      const chunk = flows.slice(at, at + batchSize);
      // A host's flows come in connection order, not close order: the window spans them all.
      const ends = chunk.map((f) => f.tEndNs);
      const firstEnd = ends.reduce((a, b) => a < b ? a : b);
      const lastEnd = ends.reduce((a, b) => a > b ? a : b);
      const cbor = encodeBatch({
        schemaVersion: SCHEMA_VERSION,
        exporterVersion: "bench",
        host: { hostname: `node-${h}`, workloadId: `host:node-${h}` },
        sequence: seq,
        windowStartNs: firstEnd,
        windowEndNs: lastEnd + 1n,
        recordCount: chunk.length,
        clockOffsetNs: 0n,
        loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
      }, chunk.map(encodeFlow));
      batches.push({ startNs: chunk[0].tStartNs, body: new Uint8Array(gzipSync(cbor)) });
    }
  });
  batches.sort((a, b) => (a.startNs < b.startNs ? -1 : a.startNs > b.startNs ? 1 : 0));
  return { bodies: batches.map((b) => b.body), flowCount: connections * 2 };
}
