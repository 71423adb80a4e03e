/**
 * Property tests (fast-check) of what a hostile or broken exporter can send: random bytes,
 * random CBOR, and valid batches mutated (bit flips, truncation, inserted and deleted bytes,
 * inflated length fields, deep nesting, tags, indefinite lengths, duplicated slices), against
 * `decodeBatch` and against the collector's HTTP ingest.
 *
 * Every CI run uses a fixed seed and a bounded number of cases (a few seconds in all). For a
 * longer run, or to replay a failure, set the environment:
 *
 * ```sh
 * FUZZ_RUNS=20 FUZZ_SEED=1234 deno test -A tests/fuzz_test.ts   # 20 times the cases, seed 1234
 * ```
 *
 * A failure prints its seed and counterexample path; `FUZZ_SEED` and `FUZZ_PATH` replay it.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { Encoder } from "cbor-x";
import type { FlowRecord } from "../lib/flow.ts";
import { DIRECTIONS, FLOW_ENDS, IDENTITY_SOURCES, RECORD_KINDS, TCP_STATES } from "../lib/flow.ts";
import {
  type BatchHeader,
  decodeBatch,
  encodeBatch,
  encodeFlow,
  SCHEMA_VERSION,
  WireFormatError,
} from "../lib/wire.ts";
import { CollectorProcess } from "./_collector.ts";
import { batchBody, batchCbor, batchCborV2 } from "./_batches.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20_260_101);
const SCALE = Number(Deno.env.get("FUZZ_RUNS") ?? 1);
const PATH = Deno.env.get("FUZZ_PATH");

/** fast-check parameters: the fixed seed, `runs` cases times FUZZ_RUNS. */
function params(runs: number): fc.Parameters<unknown> {
  return { seed: SEED, numRuns: Math.max(1, Math.round(runs * SCALE)), path: PATH };
}

/** Most time one decode may take: the bodies here are at most a few hundred KiB. */
const DECODE_MS = 250;

/** Decodes; anything thrown but a WireFormatError, or a slow answer, fails the property. */
function decodeSafely(bytes: Uint8Array): ReturnType<typeof decodeBatch> | WireFormatError {
  const start = performance.now();
  let result: ReturnType<typeof decodeBatch> | WireFormatError;
  try {
    result = decodeBatch(bytes);
  } catch (error) {
    if (!(error instanceof WireFormatError)) throw error;
    assert.equal(error.message.split("\n").length, 1, "one-line message");
    result = error;
  }
  const ms = performance.now() - start;
  assert.ok(ms < DECODE_MS, `decodeBatch took ${ms} ms on ${bytes.length} bytes`);
  return result;
}

// A valid batch to start from: version 3 or 2, 0 to 12 flows.
const validBatch = fc.record({
  version: fc.constantFrom(2, 3),
  first: fc.nat({ max: 100_000 }),
  count: fc.integer({ min: 0, max: 12 }),
}).map(({ version, first, count }) => {
  const flows = Array.from({ length: count }, (_, i) => syntheticFlow(first + i));
  return (version === 3 ? batchCbor : batchCborV2)("node-1", 42, flows);
});

type Mutation =
  | { kind: "flip"; at: number; bit: number }
  | { kind: "truncate"; at: number }
  | { kind: "insert"; at: number; bytes: Uint8Array }
  | { kind: "delete"; at: number; count: number }
  | { kind: "inflate"; at: number; head: number; argument: Uint8Array }
  | { kind: "nest"; at: number; head: number; depth: number }
  | { kind: "tag"; at: number; tag: number }
  | { kind: "indefinite"; at: number; head: number }
  | { kind: "duplicate"; from: number; to: number; count: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip"), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant("truncate"), at: fc.nat() }),
  fc.record({
    kind: fc.constant("insert"),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ kind: fc.constant("delete"), at: fc.nat(), count: fc.integer({ min: 1, max: 16 }) }),
  // A head whose argument (4 or 8 bytes) claims a huge length or value.
  fc.record({
    kind: fc.constant("inflate"),
    at: fc.nat(),
    head: fc.constantFrom(0x1a, 0x1b, 0x3b, 0x5a, 0x5b, 0x7a, 0x7b, 0x9a, 0x9b, 0xba, 0xbb),
    argument: fc.uint8Array({ minLength: 8, maxLength: 8 }),
  }),
  fc.record({
    kind: fc.constant("nest"),
    at: fc.nat(),
    head: fc.constantFrom(0x81, 0xa1, 0x9f),
    depth: fc.integer({ min: 1, max: 20_000 }),
  }),
  fc.record({ kind: fc.constant("tag"), at: fc.nat(), tag: fc.integer({ min: 0xc0, max: 0xdb }) }),
  fc.record({
    kind: fc.constant("indefinite"),
    at: fc.nat(),
    head: fc.constantFrom(0x5f, 0x7f, 0x9f, 0xbf, 0xff),
  }),
  fc.record({
    kind: fc.constant("duplicate"),
    from: fc.nat(),
    to: fc.nat(),
    count: fc.integer({ min: 1, max: 256 }),
  }),
);

function mutate(body: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let b = body;
  for (const m of mutations) {
    const at = "at" in m ? (b.length === 0 ? 0 : m.at % (b.length + 1)) : 0;
    const splice = (start: number, remove: number, insert: Uint8Array) =>
      Uint8Array.of(...b.subarray(0, start), ...insert, ...b.subarray(start + remove));
    switch (m.kind) {
      case "flip":
        if (b.length > 0) {
          b = b.slice();
          b[at % b.length] ^= 1 << m.bit;
        }
        break;
      case "truncate":
        b = b.subarray(0, at);
        break;
      case "insert":
        b = splice(at, 0, m.bytes);
        break;
      case "delete":
        b = splice(at, m.count, new Uint8Array(0));
        break;
      case "inflate": {
        const size = (m.head & 0x1f) === 26 ? 4 : 8;
        b = splice(at, 1, Uint8Array.of(m.head, ...m.argument.subarray(0, size)));
        break;
      }
      case "nest":
        b = splice(at, 0, new Uint8Array(m.depth).fill(m.head));
        break;
      case "tag":
        b = splice(at, 0, Uint8Array.of(m.tag));
        break;
      case "indefinite":
        b = splice(at, 1, Uint8Array.of(m.head));
        break;
      case "duplicate": {
        if (b.length === 0) break;
        const from = m.from % b.length;
        b = splice(m.to % (b.length + 1), 0, b.slice(from, from + m.count));
        break;
      }
    }
  }
  return b;
}

const mutatedBatch = fc.tuple(validBatch, fc.array(mutation, { minLength: 1, maxLength: 4 }))
  .map(([body, mutations]) => mutate(body, mutations));

Deno.test("fuzz: decodeBatch() on random bytes throws only WireFormatError, quickly", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 4096 }),
        // Past the first byte: a batch map of 10 entries, version 3, then noise.
        fc.uint8Array({ maxLength: 4096 }).map((tail) => Uint8Array.of(0xaa, 0x00, 0x03, ...tail)),
      ),
      (bytes) => {
        decodeSafely(bytes);
      },
    ),
    params(10_000),
  );
});

Deno.test("fuzz: decodeBatch() on random well-formed CBOR throws only WireFormatError", () => {
  const encoder = new Encoder(
    { useRecords: false, mapsAsObjects: false } as ConstructorParameters<typeof Encoder>[0],
  );
  const value = fc.letrec((tie) => ({
    any: fc.oneof(
      { depthSize: "small" },
      fc.integer(),
      fc.bigInt({ min: -(1n << 64n) + 1n, max: (1n << 64n) - 1n }),
      fc.double(),
      fc.string(),
      fc.uint8Array({ maxLength: 32 }),
      fc.boolean(),
      fc.constantFrom(null, undefined),
      fc.array(tie("any"), { maxLength: 6 }),
      fc.array(fc.tuple(fc.oneof(fc.nat({ max: 30 }), fc.string()), tie("any")), { maxLength: 12 })
        .map((entries) => new Map(entries)),
    ),
  })).any;
  // Mostly maps with the batch's keys, so that the decoder gets past the first checks.
  const batchLike = fc.array(fc.tuple(fc.nat({ max: 11 }), value), { maxLength: 12 }).map(
    (entries) => new Map<unknown, unknown>([[0, 3], ...entries]),
  );
  fc.assert(
    fc.property(fc.oneof(value, batchLike), (v) => {
      let bytes: Uint8Array;
      try {
        bytes = encoder.encode(v);
      } catch {
        return; // not encodable by cbor-x: nothing to send
      }
      decodeSafely(bytes);
    }),
    params(5000),
  );
});

Deno.test("fuzz: decodeBatch() on mutated valid batches throws only WireFormatError, and what it accepts is valid", () => {
  fc.assert(
    fc.property(mutatedBatch, (bytes) => {
      const result = decodeSafely(bytes);
      if (result instanceof WireFormatError || result.header.schemaVersion !== SCHEMA_VERSION) {
        return;
      }
      // Whatever the decoder accepts, the encoder accepts too: no out-of-range value gets in.
      const again = encodeBatch(result.header, result.flows.map(encodeFlow));
      assert.deepEqual(decodeBatch(again), result);
    }),
    params(2000),
  );
});

Deno.test("fuzz: any valid batch survives encodeBatch() and decodeBatch() unchanged", () => {
  const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
  const u32 = fc.nat({ max: 0xffff_ffff });
  const u53 = fc.maxSafeNat();
  const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
  const u63 = fc.bigInt({ min: 0n, max: (1n << 63n) - 1n });
  /** A start and an end not before it: what the wire format allows of times. */
  const span = fc.tuple(u63, u63).map(([a, b]) => a <= b ? [a, b] : [b, a]);
  const flow: fc.Arbitrary<FlowRecord> = fc.record({
    family: fc.constantFrom(4 as const, 6 as const),
    bootId: bytes(16),
    cookie: u64,
    localIp: bytes(16),
    localPort: fc.nat({ max: 0xffff }),
    remoteIp: bytes(16),
    remotePort: fc.nat({ max: 0xffff }),
    localWorkloadId: fc.string({ unit: "grapheme", maxLength: 60 }),
    identitySource: fc.constantFrom(...IDENTITY_SOURCES),
    times: span,
    seeded: fc.boolean(),
    direction: fc.constantFrom(...DIRECTIONS),
    closeState: fc.oneof(fc.constantFrom(...TCP_STATES), fc.constant("STATE_99")),
    end: fc.constantFrom(...FLOW_ENDS),
    recordKind: fc.constantFrom(...RECORD_KINDS),
    error: u32,
    bytesSent: u53,
    bytesRetrans: u53,
    bytesAcked: u53,
    bytesReceived: u53,
    segsOut: u32,
    segsIn: u32,
    totalRetrans: u32,
    srttUs: u32,
    minRttUs: u32,
    delivered: u32,
    lost: u32,
  }).map(({ times: [tStartNs, tEndNs], end, ...f }) => {
    // a plain object (fast-check's have no prototype), IPv4 addresses of 4 bytes, and an end
    // that fits the record's kind (only an interim record's flow is open)
    const fitting = f.recordKind === "interim" ? "open" : end === "open" ? "normal" : end;
    return f.family === 4
      ? {
        ...f,
        end: fitting,
        tStartNs,
        tEndNs,
        localIp: f.localIp.slice(0, 4),
        remoteIp: f.remoteIp.slice(0, 4),
      }
      : { ...f, end: fitting, tStartNs, tEndNs };
  });
  const header = fc.record({
    hostname: fc.string({ unit: "grapheme", maxLength: 40 }),
    sequence: u53,
    window: span,
    clockOffsetNs: fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
    kernelDrops: u63,
    spoolEvictions: u53,
  });
  fc.assert(
    fc.property(header, fc.array(flow, { maxLength: 8 }), (h, flows) => {
      const batch: BatchHeader = {
        schemaVersion: SCHEMA_VERSION,
        exporterVersion: "fuzz",
        host: { hostname: h.hostname, workloadId: "" },
        sequence: h.sequence,
        windowStartNs: h.window[0],
        windowEndNs: h.window[1],
        recordCount: flows.length,
        clockOffsetNs: h.clockOffsetNs,
        loss: { kernelDrops: h.kernelDrops, recursionMisses: 0n, spoolEvictions: h.spoolEvictions },
      };
      const decoded = decodeBatch(encodeBatch(batch, flows.map(encodeFlow)));
      assert.deepEqual(decoded, { header: batch, flows });
    }),
    params(500),
  );
});

/** Bound of the collector's resident set, peak included, under the fuzzing below. */
const MEMORY_BOUND_MIB = 256;
/** Bound of the time to answer one request of a body up to {@linkcode LARGE_BODY_BYTES}. */
const ANSWER_MS = 1000;
/** The largest bodies sent: 64 KiB. */
const LARGE_BODY_BYTES = 64 * 1024;

/** VmRSS and VmHWM (the peak) of process `pid`, MiB, from `/proc/<pid>/status`. */
async function memoryMiB(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, "m").exec(status)![1]);
  return { rss: kib("VmRSS") / 1024, peak: kib("VmHWM") / 1024 };
}

Deno.test("fuzz: the HTTP ingest answers mutated bodies with 4xx in time, within its memory bound, and stores every valid batch sent between them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fuzz_test_" });
  // A collector process of its own, so that /proc shows its memory and nothing else's.
  const collector = await CollectorProcess.start(`${dir}/flows.db`);
  const post = async (body: Uint8Array, encoding: string) => {
    const start = performance.now();
    const response = await fetch(collector.batchesUrl, {
      method: "POST",
      body: body as BodyInit,
      headers: { "content-type": "application/cbor", "content-encoding": encoding },
    });
    const text = await response.text();
    return { status: response.status, text, ms: performance.now() - start };
  };
  let valid = 0;
  let slowestMs = 0;
  let largest = 0;
  try {
    const body = fc.oneof(
      // Mutated CBOR, sent gzipped or as is.
      fc.tuple(mutatedBatch, fc.boolean()).map(([cbor, gzip]) =>
        gzip ? { bytes: gzipSync(cbor), encoding: "gzip" } : { bytes: cbor, encoding: "identity" }
      ),
      // A valid gzip body mutated after compression.
      fc.tuple(validBatch, fc.array(mutation, { minLength: 1, maxLength: 3 })).map((
        [cbor, mutations],
      ) => ({ bytes: mutate(gzipSync(cbor), mutations), encoding: "gzip" })),
      // 64 KiB: a batch of some 600 flows mutated, or noise.
      fc.tuple(fc.nat({ max: 100_000 }), fc.array(mutation, { minLength: 1, maxLength: 3 }))
        .map(([first, mutations]) => {
          const flows = Array.from({ length: 600 }, (_, i) => syntheticFlow(first + i));
          const cbor = batchCbor("node-1", 43, flows).subarray(0, LARGE_BODY_BYTES);
          return { bytes: mutate(cbor, mutations), encoding: "identity" };
        }),
      fc.uint8Array({ minLength: LARGE_BODY_BYTES, maxLength: LARGE_BODY_BYTES })
        .map((bytes) => ({ bytes, encoding: "identity" })),
    );
    await fc.assert(
      fc.asyncProperty(body, async ({ bytes, encoding }) => {
        const sequence = ++valid;
        const [hostile, good] = await Promise.all([
          post(bytes, encoding),
          post(batchBody("fuzz-valid", sequence, [syntheticFlow(1_000_000 + sequence)]), "gzip"),
        ]);
        assert.ok(
          hostile.status === 200 || (hostile.status >= 400 && hostile.status < 500),
          `HTTP ${hostile.status}: ${hostile.text}`,
        );
        assert.equal(hostile.text.trimEnd().split("\n").length, 1, "one line");
        assert.ok(hostile.ms < ANSWER_MS, `answered ${bytes.length} bytes in ${hostile.ms} ms`);
        assert.equal(good.status, 200, good.text);
        assert.equal(JSON.parse(good.text).status, "stored");
        slowestMs = Math.max(slowestMs, hostile.ms);
        largest = Math.max(largest, bytes.length);
      }),
      params(300),
    );
    const stored = await collector.flows({ host: "fuzz-valid" });
    assert.equal(
      stored.length,
      valid,
      "every valid batch sent between the hostile ones was stored",
    );
    const health = await fetch(`${collector.url}/healthz`);
    assert.equal(await health.text(), "ok\n");
    const memory = await memoryMiB(collector.pid);
    assert.ok(
      memory.peak < MEMORY_BOUND_MIB,
      `the collector's resident set peaked at ${memory.peak} MiB (now ${memory.rss} MiB)`,
    );
    assert.ok(largest >= LARGE_BODY_BYTES, `bodies of up to ${largest} bytes were sent`);
    console.log(
      `fuzz: ${valid} hostile requests (up to ${largest} bytes) answered in ${
        slowestMs.toFixed(0)
      } ms at most; collector resident set ${memory.rss.toFixed(0)} MiB, peak ${
        memory.peak.toFixed(0)
      } MiB`,
    );
  } finally {
    await collector.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
