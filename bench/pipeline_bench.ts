/**
 * Exporter pipeline benchmark: kernel `struct fe_flow` bytes → encoded where they lie, a poll at a
 * time (encodeRecords) → into windows (lib/batcher.ts) → compress (zstd, or gzip) → spool (fsync),
 * no collector.
 *
 * Part 1 times each stage on one thread. Part 2, in a child process so its peak RSS is its
 * own, pushes a full 60-second window at 50 000 flows/s (3 000 000 flows) through the real
 * Shipper as fast as it goes, on a simulated clock, and reports throughput, CPU, bytes per
 * flow and peak RSS.
 *
 * Run: deno run -A bench/pipeline_bench.ts [--rate 50000] [--seconds 60]
 *
 * @module
 */

import { cpuUsage } from "node:process";
import { parseArgs } from "node:util";
import { gzip as zlibGzip } from "node:zlib";
import { type BodyCoding, DEFAULT_BODY_CODING, DEFAULT_GZIP_LEVEL } from "../lib/body_coding.ts";
import { compress as compressBody, decompress } from "../lib/compression.ts";
import { SYNTHETIC_BOOT_ID, syntheticFlow } from "../tests/_synthetic_flows.ts";
import { Batcher, type ClosedWindow, DEFAULT_MAX_RECORDS } from "../lib/batcher.ts";
import { decodeFlows, RECORD_OFFSETS, RECORD_SIZE } from "../lib/decode.ts";
import { TCP_STATES } from "../lib/flow.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { Shipper } from "../lib/shipper.ts";
import { nativeFrameCompressor } from "../ffi/frame_compressor.ts";
import { Spool } from "../lib/spool.ts";
import { encodeBatchParts, encodeFlow, MAX_BATCH_BYTES, SCHEMA_VERSION } from "../lib/wire.ts";
import { encodeRecords, FlowBuffer } from "../lib/encoded_flows.ts";

const T0_MS = Date.UTC(2026, 0, 1, 12, 0, 0); // a minute boundary
const BOOT_NS = 86_400_000_000_000n; // the kernel clock: one day since boot
const OFFSET_NS = BigInt(T0_MS) * 1_000_000n - BOOT_NS;
const POOL = 16_384; // distinct pre-built kernel records, patched per flow
const MESSAGE = 256; // records per poll-worker message
const FIRST_COOKIE = 1_000_001n; // socket cookies: one per flow

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "50000" },
    seconds: { type: "string", default: "60" },
    "max-records": { type: "string", default: String(DEFAULT_MAX_RECORDS) },
    "gzip-level": { type: "string", default: String(DEFAULT_GZIP_LEVEL) },
    compression: { type: "string", default: DEFAULT_BODY_CODING },
    child: { type: "boolean", default: false },
  },
});
const RATE = Number(args.rate);
const SECONDS = Number(args.seconds);
const MAX_RECORDS = Number(args["max-records"]);
const GZIP_LEVEL = Number(args["gzip-level"]);
const CODING = args.compression as BodyCoding;

// ---------------------------------------------------------------- kernel records

/** `struct fe_flow` (bpf/flowexporter.h), little endian, from a FlowRecord. */
function packFeFlow(r: FlowRecord, out: Uint8Array, at: number): void {
  const o = RECORD_OFFSETS;
  const v = new DataView(out.buffer, out.byteOffset + at, RECORD_SIZE);
  v.setBigUint64(o.t_start_ns, r.tStartNs - OFFSET_NS, true);
  v.setBigUint64(o.t_end_ns, r.tEndNs - OFFSET_NS, true);
  v.setBigUint64(o.bytes_sent, BigInt(r.bytesSent), true);
  v.setBigUint64(o.bytes_acked, BigInt(r.bytesAcked), true);
  v.setBigUint64(o.bytes_received, BigInt(r.bytesReceived), true);
  v.setBigUint64(o.bytes_retrans, BigInt(r.bytesRetrans), true);
  v.setBigUint64(o.cookie, r.cookie, true);
  v.setUint32(o.segs_out, r.segsOut, true);
  v.setUint32(o.segs_in, r.segsIn, true);
  v.setUint32(o.total_retrans, r.totalRetrans, true);
  v.setUint32(o.srtt_us, r.srttUs, true);
  v.setUint32(o.min_rtt_us, r.minRttUs, true);
  v.setUint32(o.delivered, r.delivered, true);
  v.setUint32(o.lost, r.lost, true);
  const ip16 = (ip: Uint8Array) =>
    ip.length === 16 ? ip : Uint8Array.of(...Array(10).fill(0), 0xff, 0xff, ...ip);
  out.set(ip16(r.localIp), at + o.local_ip);
  out.set(ip16(r.remoteIp), at + o.remote_ip);
  v.setUint16(o.local_port, r.localPort, true);
  v.setUint16(o.remote_port, r.remotePort, true);
  v.setUint8(o.family, r.family);
  v.setUint8(o.direction, ["unknown", "outbound", "inbound"].indexOf(r.direction));
  v.setUint8(o.close_state, (TCP_STATES as readonly string[]).indexOf(r.closeState));
  v.setUint8(
    o.identity_source,
    ["unknown", "host", "ip-map", "port-map"].indexOf(r.identitySource),
  );
  v.setUint8(o.flags, r.seeded ? 1 : 0);
  v.setUint8(o.error, r.error);
  out.set(new TextEncoder().encode(r.localWorkloadId), at + o.workload_id);
}

/**
 * A pool of kernel records; `message(n)` patches times, counters and cookies for flows n.. and
 * returns 256.
 */
function kernelSource() {
  const pool = new Uint8Array(POOL * RECORD_SIZE);
  for (let i = 0; i < POOL; i++) packFeFlow(syntheticFlow(i * 7919), pool, i * RECORD_SIZE);
  const view = new DataView(pool.buffer);
  const o = RECORD_OFFSETS;
  return (n: number): Uint8Array => {
    const first = (n % POOL) - ((n % POOL) % MESSAGE);
    for (let k = 0; k < MESSAGE; k++) {
      const at = (first + k) * RECORD_SIZE;
      const endNs = BOOT_NS + BigInt(Math.floor(((n + k) / RATE) * 1e9));
      view.setBigUint64(
        at + o.t_start_ns,
        endNs - BigInt(1_000_000 + ((n + k) % 997) * 1000),
        true,
      );
      view.setBigUint64(at + o.t_end_ns, endNs, true);
      view.setUint32(at + o.bytes_sent, (n + k) * 2_654_435_761 % 3_000_000, true);
      view.setBigUint64(at + o.cookie, FIRST_COOKIE + BigInt(n + k), true);
      view.setUint16(at + o.remote_port, 1024 + ((n + k) % 60_000), true);
    }
    return pool.subarray(first * RECORD_SIZE, (first + MESSAGE) * RECORD_SIZE);
  };
}

/** One poll's records, as the agent's intake gets them. */
function poll(records: Uint8Array) {
  return { records, clockOffsetNs: OFFSET_NS, bootId: SYNTHETIC_BOOT_ID };
}

/** The synthetic records are all valid: an invalid one is the benchmark's bug. */
const refuseInvalid = () => false;

// ---------------------------------------------------------------- part 1: stages

function rate(count: number, ms: number): string {
  return `${Math.round((count / ms) * 1000).toLocaleString("en-US")}/s`;
}

function perFlowUs(ms: number, count: number): string {
  return `${(ms / count * 1000).toFixed(2)} µs/flow`;
}

/** Median of 7 timed runs after 2 warm-up runs, ms: steadier than one run on a shared host. */
function medianMs(run: () => void): number {
  run();
  run();
  const times = Array.from({ length: 7 }, () => {
    const start = performance.now();
    run();
    return performance.now() - start;
  }).sort((a, b) => a - b);
  return times[3];
}

async function stages(): Promise<void> {
  const source = kernelSource();
  const N = 200_000;
  const rows: string[][] = [];

  decodeFlows(source(0), OFFSET_NS, SYNTHETIC_BOOT_ID); // warm-up
  let t = performance.now();
  const records: FlowRecord[] = [];
  for (let n = 0; n < N; n += MESSAGE) {
    records.push(...decodeFlows(source(n), OFFSET_NS, SYNTHETIC_BOOT_ID));
  }
  rows.push([
    "decode fe_flow → FlowRecord (for JSON only)",
    rate(N, performance.now() - t),
    "",
    "",
  ]);

  const rawMs = medianMs(() => {
    const rawBatcher = new Batcher({
      onWindow: () => {},
      now: () => T0_MS,
      maxBytes: MAX_BATCH_BYTES - 1024 * 1024,
    });
    const buffer = new FlowBuffer();
    for (let n = 0; n < N; n += MESSAGE) {
      rawBatcher.addEncoded(encodeRecords(buffer, poll(source(n)), refuseInvalid));
    }
    rawBatcher.flush();
  });
  rows.push([
    "fe_flow → window, encoded in place (encodeRecords, the agent)",
    rate(N, rawMs),
    "",
    perFlowUs(rawMs, N),
  ]);

  let windows: ClosedWindow[] = [];
  const batcher = new Batcher({
    onWindow: (w) => windows.push(w),
    now: () => T0_MS,
    maxBytes: MAX_BATCH_BYTES - 1024 * 1024,
  });
  const encodeMs = medianMs(() => {
    windows = [];
    for (const r of records) batcher.add(r);
    batcher.flush();
  });
  const encodedBytes = windows.reduce((n, w) => n + w.byteLength, 0);
  rows.push([
    "encode into the window (Batcher.add)",
    rate(N, encodeMs),
    `${(encodedBytes / N).toFixed(1)} B/flow`,
    perFlowUs(encodeMs, N),
  ]);
  const flowMs = medianMs(() => {
    for (const r of records) encodeFlow(r);
  });
  rows.push(["encodeFlow alone (a view per flow)", rate(N, flowMs), "", perFlowUs(flowMs, N)]);
  const window = windows[0];
  const flows = window.recordCount;

  // One default-size batch (100 000 flows), compressed several ways.
  const batch = encodeBatchParts({
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "bench",
    host: { hostname: "bench-host", workloadId: "k8s://kube-system/flowexporter-abcde" },
    sequence: 1,
    windowStartNs: window.windowStartNs,
    windowEndNs: window.windowEndNs,
    recordCount: window.recordCount,
    clockOffsetNs: OFFSET_NS,
    loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
  }, window.frames);
  const rawBytes = batch.reduce((n, p) => n + p.length, 0);
  const body = new Uint8Array(rawBytes);
  batch.reduce((offset, p) => (body.set(p, offset), offset + p.length), 0);
  const perBatch = DEFAULT_MAX_RECORDS / flows;
  const compress = async (name: string, run: () => Promise<number>) => {
    await run(); // warm-up
    const start = performance.now();
    const size = await run();
    const ms = performance.now() - start;
    rows.push([
      name,
      rate(flows, ms),
      `${(size / flows).toFixed(1)} B/flow`,
      `${(ms * perBatch).toFixed(0)} ms/batch, ${(rawBytes / ms / 1000).toFixed(0)} MB/s`,
    ]);
  };
  await compress(
    "zstd level 1, streamed parts (lib/compression.ts)",
    async () => (await compressBody(batch, "zstd")).length,
  );
  for (const level of [1, 3, 6]) {
    await compress(
      `gzip level ${level}, streamed parts (lib/compression.ts)`,
      async () => (await compressBody(batch, "gzip", level)).length,
    );
  }
  await compress(
    "gzip level 3, one-shot on the whole body",
    () =>
      new Promise((resolve, reject) =>
        zlibGzip(body, { level: 3 }, (e, r) => e ? reject(e) : resolve(r.length))
      ),
  );
  await compress("CompressionStream gzip (no level)", async () => {
    const stream = new Blob(batch as BlobPart[]).stream().pipeThrough(
      new CompressionStream("gzip"),
    );
    return (await new Response(stream).arrayBuffer()).byteLength;
  });

  const dir = await Deno.makeTempDir({ prefix: "pipeline_bench_" });
  try {
    const spool = await Spool.open({ dir, maxBytes: 1 << 30 });
    const compressed = await compressBody(batch);
    const count = 20;
    t = performance.now();
    for (let i = 0; i < count; i++) {
      await spool.write(
        {
          schemaVersion: SCHEMA_VERSION,
          exporterVersion: "bench",
          host: { hostname: "h", workloadId: "" },
          sequence: spool.nextSequence,
          windowStartNs: 0n,
          windowEndNs: 0n,
          recordCount: 0,
          clockOffsetNs: 0n,
          loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
        },
        [compressed],
        DEFAULT_BODY_CODING,
      );
    }
    const ms = performance.now() - t;
    rows.push([
      `spool write (${(compressed.length / 1e6).toFixed(1)} MB batch, 3 fsyncs)`,
      rate(count * DEFAULT_MAX_RECORDS, ms),
      "",
      `${(ms / count).toFixed(1)} ms/batch`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  table(`Part 1: stages, one thread, ${N.toLocaleString("en-US")} flows`, [
    ["stage", "flows/s", "size", "notes"],
    ...rows,
  ]);
}

// ---------------------------------------------------------------- part 2: one window, end to end

interface EndToEnd {
  flows: number;
  wallMs: number;
  cpuMs: number;
  batches: number;
  rawBytes: number;
  compressedBytes: number;
  rssStartMb: number;
  peakRssMb: number;
  /** Largest V8 heap and off-heap (ArrayBuffer) sizes seen once per simulated second. */
  heapMb: number;
  externalMb: number;
}

async function endToEnd(): Promise<EndToEnd> {
  const source = kernelSource();
  const total = RATE * SECONDS;
  const clock = { ms: T0_MS };
  const dir = await Deno.makeTempDir({ prefix: "pipeline_bench_" });
  try {
    const compressFrame = nativeFrameCompressor();
    const shipper = new Shipper({
      spoolDir: dir,
      spoolMaxBytes: 8 * 1024 ** 3,
      exporterVersion: "bench",
      host: () => ({ hostname: "bench-host", workloadId: "k8s://kube-system/flowexporter-abcde" }),
      clockOffsetNs: () => OFFSET_NS,
      lossCounters: () => ({ kernelDrops: 0n, recursionMisses: 0n }),
      now: () => clock.ms,
      maxRecords: MAX_RECORDS,
      compression: CODING,
      gzipLevel: GZIP_LEVEL,
      compressFrame, // the agent's
    });
    await shipper.start();
    const rssStartMb = Deno.memoryUsage().rss / 2 ** 20;
    let heapMb = 0;
    let externalMb = 0;
    const buffer = new FlowBuffer();
    const cpu0 = cpuUsage();
    const t0 = performance.now();
    for (let n = 0; n < total; n += MESSAGE) {
      clock.ms = T0_MS + (n / RATE) * 1000;
      const bytes = source(n).subarray(0, Math.min(MESSAGE, total - n) * RECORD_SIZE);
      shipper.addEncoded(encodeRecords(buffer, poll(bytes), refuseInvalid));
      if (n % RATE < MESSAGE) {
        // Once per simulated second: let compression and the spool catch up, as the
        // idle part of each real second would.
        await yieldToEventLoop();
        while (shipper.stats().windowsPending > 1) await yieldToEventLoop();
        const memory = Deno.memoryUsage();
        heapMb = Math.max(heapMb, memory.heapTotal / 2 ** 20);
        externalMb = Math.max(externalMb, memory.external / 2 ** 20);
      }
    }
    clock.ms = T0_MS + SECONDS * 1000;
    const stats = await shipper.close(10_000);
    const wallMs = performance.now() - t0;
    const cpu = cpuUsage(cpu0);
    const peakRssMb =
      Number(/VmHWM:\s+(\d+) kB/.exec(await Deno.readTextFile("/proc/self/status"))?.[1]) / 1024;
    let rawBytes = 0;
    let compressedBytes = 0;
    const spool = await Spool.open({ dir, maxBytes: 8 * 1024 ** 3 });
    for (const entry of spool.pending()) {
      const body = await Deno.readFile(entry.path);
      compressedBytes += body.length;
      rawBytes += (await decompress(body, entry.coding, MAX_BATCH_BYTES)).length;
    }
    if (stats.recordsAdded !== total) {
      throw new Error(`Added ${stats.recordsAdded} of ${total} flows`);
    }
    return {
      flows: total,
      wallMs,
      cpuMs: (cpu.user + cpu.system) / 1000,
      batches: stats.batchesSpooled,
      rawBytes,
      compressedBytes,
      rssStartMb,
      peakRssMb,
      heapMb,
      externalMb,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

function table(title: string, rows: string[][]): void {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  console.log(`\n${title}`);
  rows.forEach((row, i) => {
    console.log(
      row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join(
        "  ",
      ),
    );
    if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  });
}

if (args.child) {
  console.log(JSON.stringify(await endToEnd()));
} else {
  await stages();
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      import.meta.filename!,
      "--child",
      `--rate=${RATE}`,
      `--seconds=${SECONDS}`,
      `--max-records=${MAX_RECORDS}`,
      `--gzip-level=${GZIP_LEVEL}`,
      `--compression=${CODING}`,
    ],
    stderr: "inherit",
  }).output();
  if (!child.success) throw new Error("The end-to-end run failed");
  const r: EndToEnd = JSON.parse(new TextDecoder().decode(child.stdout));
  const perFlow = (bytes: number) => `${(bytes / r.flows).toFixed(1)} B`;
  table(
    `Part 2: ${SECONDS} s window at ${RATE.toLocaleString("en-US")} flows/s = ${
      r.flows.toLocaleString("en-US")
    } flows, decode → batch (cap ${MAX_RECORDS.toLocaleString("en-US")} flows) → ${
      CODING === "gzip" ? `gzip ${GZIP_LEVEL}` : "zstd 1"
    } → spool, as fast as possible`,
    [
      ["figure", "value"],
      ["wall time", `${(r.wallMs / 1000).toFixed(2)} s`],
      ["flows/s sustained", rate(r.flows, r.wallMs)],
      ["times the target rate", `${((r.flows / r.wallMs) * 1000 / RATE).toFixed(1)}x`],
      [
        "CPU time (user + system)",
        `${(r.cpuMs / 1000).toFixed(2)} s (${(r.cpuMs / r.wallMs).toFixed(2)} cores)`,
      ],
      ["CPU per second of traffic", `${(r.cpuMs / SECONDS / 10).toFixed(1)} % of a core`],
      ["CPU per 1000 flows", `${(r.cpuMs / r.flows * 1000).toFixed(2)} ms`],
      ["batches", String(r.batches)],
      ["bytes/flow, CBOR", perFlow(r.rawBytes)],
      [`bytes/flow, ${CODING} (on the wire)`, perFlow(r.compressedBytes)],
      ["compression ratio", `${(r.rawBytes / r.compressedBytes).toFixed(2)}`],
      ["RSS before the window", `${r.rssStartMb.toFixed(0)} MiB`],
      ["peak RSS (VmHWM)", `${r.peakRssMb.toFixed(0)} MiB`],
      ["  largest V8 heap seen", `${r.heapMb.toFixed(0)} MiB`],
      ["  largest ArrayBuffer memory seen", `${r.externalMb.toFixed(0)} MiB`],
    ],
  );
}
