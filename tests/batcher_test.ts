import assert from "node:assert/strict";
import fc from "fast-check";
import { syntheticFlow } from "./_synthetic_flows.ts";
import { Batcher, type BatcherOptions, type ClosedWindow, MIN_BYTE_CAP } from "../lib/batcher.ts";
import { concatBytes } from "../lib/bytes.ts";
import { decodeBatch, encodeBatch, encodeFlow, SCHEMA_VERSION } from "../lib/wire.ts";
import { compressFrame, decompress } from "../lib/compression.ts";

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0); // a minute boundary, ms
const NS = 1_000_000n;

/** A batcher on a hand-driven clock that collects its windows. */
function harness(options: Partial<BatcherOptions> = {}, startMs = T0 + 37_500) {
  const clock = { ms: startMs };
  const windows: ClosedWindow[] = [];
  const batcher = new Batcher({
    onWindow: (w) => windows.push(w),
    now: () => clock.ms,
    ...options,
  });
  return { clock, windows, batcher };
}

/** The flows of a closed window, decoded back. */
function flowsOf(window: ClosedWindow) {
  const body = encodeBatch({
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "test",
    host: { hostname: "h", workloadId: "" },
    sequence: 1,
    windowStartNs: window.windowStartNs,
    windowEndNs: window.windowEndNs,
    recordCount: window.recordCount,
    clockOffsetNs: 0n,
    loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
  }, window.frames);
  return decodeBatch(body).flows;
}

Deno.test("windows align to the wall-clock minute and late flows go to the next window", () => {
  const { clock, windows, batcher } = harness();
  assert.equal(batcher.msUntilClose(), 22_500);
  batcher.add(syntheticFlow(1));
  batcher.add(syntheticFlow(2));
  clock.ms = T0 + 59_999;
  batcher.add(syntheticFlow(3));
  assert.equal(windows.length, 0);
  clock.ms = T0 + 60_000;
  batcher.add(syntheticFlow(4));
  assert.equal(windows.length, 1);
  const [first] = windows;
  assert.equal(first.reason, "interval");
  assert.equal(first.windowStartNs, BigInt(T0) * NS);
  assert.equal(first.windowEndNs, BigInt(T0 + 60_000) * NS);
  assert.equal(first.recordCount, 3);
  assert.deepEqual(flowsOf(first), [syntheticFlow(1), syntheticFlow(2), syntheticFlow(3)]);
  assert.equal(batcher.pendingRecords, 1, "the late flow opened the next window");
  assert.equal(batcher.msUntilClose(), 60_000);
});

Deno.test("tick() closes a window on time even when it is empty", async (t) => {
  const { clock, windows, batcher } = harness({ intervalMs: 10_000 });
  await t.step("nothing closes before the boundary", () => {
    clock.ms = T0 + 39_999;
    assert.equal(batcher.tick(), false);
    assert.equal(windows.length, 0);
  });
  await t.step("an empty window closes at its aligned end", () => {
    clock.ms = T0 + 40_001;
    assert.equal(batcher.tick(), true);
    assert.equal(windows[0].recordCount, 0);
    assert.equal(windows[0].windowStartNs, BigInt(T0 + 30_000) * NS);
    assert.equal(windows[0].windowEndNs, BigInt(T0 + 40_000) * NS);
  });
  await t.step("after a stall the next window starts at the current interval", () => {
    clock.ms = T0 + 95_000;
    batcher.tick();
    assert.equal(windows[1].windowEndNs, BigInt(T0 + 50_000) * NS);
    clock.ms = T0 + 100_000;
    batcher.tick();
    assert.equal(windows[2].windowStartNs, BigInt(T0 + 90_000) * NS);
    assert.equal(windows[2].windowEndNs, BigInt(T0 + 100_000) * NS);
  });
});

Deno.test("a record cap closes a window early and the next keeps the aligned end", () => {
  const { clock, windows, batcher } = harness({ maxRecords: 3 });
  for (let i = 0; i < 7; i++) {
    clock.ms = T0 + 40_000 + i * 1000;
    batcher.add(syntheticFlow(i));
  }
  assert.deepEqual(windows.map((w) => [w.recordCount, w.reason]), [[3, "records"], [3, "records"]]);
  assert.equal(windows[0].windowStartNs, BigInt(T0) * NS);
  assert.equal(windows[0].windowEndNs, BigInt(T0 + 42_000) * NS);
  assert.equal(windows[1].windowStartNs, BigInt(T0 + 42_000) * NS);
  assert.equal(windows[1].windowEndNs, BigInt(T0 + 45_000) * NS);
  assert.equal(batcher.pendingRecords, 1);
  assert.equal(batcher.msUntilClose(), 14_000);
});

Deno.test("a byte cap closes a window before it would overflow, losing no flow", () => {
  const { windows, batcher } = harness({ maxBytes: 1024 });
  const records = Array.from({ length: 50 }, (_, i) => syntheticFlow(i));
  for (const record of records) batcher.add(record);
  batcher.flush();
  assert.ok(windows.length >= 6, `${windows.length} windows`);
  for (const w of windows) {
    assert.ok(w.byteLength <= 1024, `a window of ${w.byteLength} bytes`);
    assert.equal(w.byteLength, w.frames.reduce((n, c) => n + c.length, 0));
    assert.ok(w.frames.every((c) => c instanceof Uint8Array));
  }
  assert.deepEqual(
    windows.slice(0, -1).map((w) => w.reason),
    Array(windows.length - 1).fill("bytes"),
  );
  assert.deepEqual(windows.flatMap(flowsOf), records);
});

Deno.test("flush() closes the open window now, or an overdue one at its end", () => {
  const { clock, windows, batcher } = harness();
  batcher.add(syntheticFlow(1));
  batcher.flush();
  assert.equal(windows.length, 1);
  assert.equal(windows[0].reason, "flush");
  assert.equal(windows[0].windowEndNs, BigInt(T0 + 37_500) * NS);
  batcher.add(syntheticFlow(2));
  clock.ms = T0 + 61_000;
  batcher.flush();
  assert.deepEqual(windows.map((w) => w.reason), ["flush", "interval"]);
  assert.equal(windows[1].windowStartNs, BigInt(T0 + 37_500) * NS);
  assert.equal(windows[1].windowEndNs, BigInt(T0 + 60_000) * NS);
});

Deno.test("an invalid flow is refused and leaves the window unchanged", () => {
  const { batcher } = harness();
  batcher.add(syntheticFlow(1));
  assert.throws(() => batcher.add({ ...syntheticFlow(2), remotePort: 70_000 }), {
    name: "WireFormatError",
  });
  assert.equal(batcher.pendingRecords, 1);
});

Deno.test("the interval and caps are validated with a clear error", () => {
  const onWindow = () => {};
  for (const intervalMs of [999, 600_001, 1500.5]) {
    assert.throws(() => new Batcher({ onWindow, intervalMs }), {
      name: "RangeError",
      message:
        `Invalid batch interval ${intervalMs} ms: use a whole number of ms from 1000 (1 s) to 600000 (10 min)`,
    });
  }
  assert.throws(() => new Batcher({ onWindow, maxRecords: 0 }), /Invalid batch record cap 0/);
  assert.throws(() => new Batcher({ onWindow, maxBytes: 1 << 30 }), /Invalid batch byte cap/);
  assert.equal(new Batcher({ onWindow, intervalMs: 1000 }).pendingRecords, 0);
  assert.equal(new Batcher({ onWindow, intervalMs: 600_000 }).pendingRecords, 0);
});

Deno.test("a window compressed a chunk at a time decompresses to its flows, whichever coding", async () => {
  for (const coding of ["zstd", "gzip"] as const) {
    const pieces: number[] = [];
    const { windows, batcher } = harness({
      compress: (piece) => {
        pieces.push(piece.length);
        return compressFrame(piece, coding);
      },
    });
    const perWindow = 3000; // about 500 KB of CBOR: two chunks and a half
    const records = Array.from({ length: 2 * perWindow }, (_, i) => syntheticFlow(i));
    for (const record of records.slice(0, perWindow)) batcher.add(record);
    batcher.flush(); // a window that ends mid-chunk: the next one starts where it stopped
    for (const record of records.slice(perWindow)) batcher.add(record);
    batcher.flush();
    assert.equal(windows.length, 2);
    assert.ok(pieces.length >= 5, `${pieces.length} pieces: the chunk was reused`);
    for (const [i, w] of windows.entries()) {
      const joined = new Uint8Array(w.frames.reduce((n, f) => n + f.length, 0));
      w.frames.reduce((at, f) => (joined.set(f, at), at + f.length), 0);
      const plain = await decompress(joined, coding, 1 << 24);
      assert.equal(plain.length, w.byteLength);
      assert.deepEqual(
        flowsOf({ ...w, frames: [plain] }),
        records.slice(i * perWindow, (i + 1) * perWindow),
      );
    }
  }
});

Deno.test("a released window's buffer serves a later window; one not released is never reused", () => {
  const { windows, batcher } = harness({ maxRecords: 300 });
  const fill = (from: number) => {
    for (let i = from; i < from + 300; i++) batcher.add(syntheticFlow(i));
  };
  fill(0);
  fill(300); // the first window is not released yet: the second gets a buffer of its own
  const [first, second] = windows;
  assert.notEqual(second.frames[0].buffer, first.frames[0].buffer);
  assert.deepEqual(flowsOf(first), Array.from({ length: 300 }, (_, i) => syntheticFlow(i)));
  first.release();
  fill(600);
  const third = windows[2];
  assert.equal(third.frames[0].buffer, first.frames[0].buffer, "the released buffer came back");
  assert.deepEqual(flowsOf(third), Array.from({ length: 300 }, (_, i) => syntheticFlow(600 + i)));
  first.release(); // a second call hands over nothing: the third window still holds the buffer
  fill(900);
  assert.notEqual(windows[3].frames[0].buffer, third.frames[0].buffer);
  assert.deepEqual(flowsOf(third), Array.from({ length: 300 }, (_, i) => syntheticFlow(600 + i)));
  assert.deepEqual(flowsOf(second), Array.from({ length: 300 }, (_, i) => syntheticFlow(300 + i)));
});

Deno.test("addEncoded() makes, a poll at a time, the windows add() makes one flow at a time", () => {
  // Enough flows for the 256 KiB chunk to fill and start over several times.
  const records = Array.from({ length: 3000 }, (_, i) => syntheticFlow(i));
  const encodings = records.map((r) => encodeFlow(r).slice());
  const ends = new Uint32Array(encodings.length);
  encodings.reduce((end, e, i) => (ends[i] = end + e.length), 0);
  const bytes = concatBytes(encodings);
  /** What a window holds, its frames joined (the default compress copies). */
  const summary = (w: ClosedWindow) => ({
    reason: w.reason,
    recordCount: w.recordCount,
    byteLength: w.byteLength,
    bytes: concatBytes(w.frames),
  });
  fc.assert(
    fc.property(
      fc.integer({ min: 5, max: 3000 }),
      fc.integer({ min: MIN_BYTE_CAP, max: 400_000 }),
      fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 30 }),
      (maxRecords, maxBytes, polls) => {
        const one = harness({ maxRecords, maxBytes });
        for (const record of records) one.batcher.add(record);
        one.batcher.flush();
        const many = harness({ maxRecords, maxBytes });
        let first = 0;
        for (let p = 0; first < ends.length; p = (p + 1) % polls.length) {
          const last = Math.min(first + polls[p], ends.length);
          const start = first === 0 ? 0 : ends[first - 1];
          many.batcher.addEncoded({
            bytes: bytes.subarray(start, ends[last - 1]),
            ends: ends.subarray(first, last).map((end) => end - start),
          });
          first = last;
        }
        many.batcher.flush();
        assert.deepEqual(many.windows.map(summary), one.windows.map(summary));
      },
    ),
    // Each run encodes thousands of flows: report the first failure rather than shrink it.
    { numRuns: 25, endOnFailure: true },
  );
});
