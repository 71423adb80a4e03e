/** The interim pass's schedule (lib/interim.ts), with a fake snapshot and no kernel. */
import assert from "node:assert/strict";
import { InterimSnapshots } from "../lib/interim.ts";
import { until } from "./_until.ts";

Deno.test("InterimSnapshots runs a pass at each window end and hands its records on", async () => {
  const passes: { minAgeNs: bigint; atMs: number }[] = [];
  const taken: number[] = [];
  const timings: number[] = [];
  const interim = new InterimSnapshots({
    windowMs: 1000,
    minAgeMs: 2500,
    snapshot: (minAgeNs, onRecords) => {
      passes.push({ minAgeNs, atMs: Date.now() });
      onRecords(new Uint8Array([passes.length]));
      return Promise.resolve(1);
    },
    onRecords: (bytes) => taken.push(bytes[0]),
    onPass: (records) => timings.push(records),
    onError: (error) => assert.fail(error.message),
  });
  try {
    await until(() => passes.length >= 2, "two passes");
  } finally {
    await interim.close();
  }
  assert.deepEqual(passes.map((p) => p.minAgeNs), [2_500_000_000n, 2_500_000_000n]);
  // Timers never fire early: each pass runs at or after a window end, one window apart.
  assert.ok(passes[1].atMs - passes[0].atMs >= 500, "not two passes in one window");
  assert.deepEqual(taken, [1, 2]);
  assert.deepEqual(timings, [1, 1]);
  const count = passes.length;
  await new Promise((resolve) => setTimeout(resolve, 1200));
  assert.equal(passes.length, count, "no pass after close()");
});

Deno.test("InterimSnapshots reports a failed pass and tries again at the next window end", async () => {
  const errors: string[] = [];
  let calls = 0;
  const interim = new InterimSnapshots({
    windowMs: 1000,
    minAgeMs: 1000,
    snapshot: () => {
      calls++;
      return calls === 1
        ? Promise.reject(new Error("Cannot start a snapshot pass"))
        : Promise.resolve(0);
    },
    onRecords: () => {},
    onError: (error) => errors.push(error.message),
  });
  try {
    await until(() => calls >= 2, "a second pass after the failed one");
  } finally {
    await interim.close();
  }
  assert.deepEqual(errors, ["Cannot start a snapshot pass"]);
});

Deno.test("close() waits for a pass that is running", async () => {
  let release = () => {};
  let started = false;
  let finished = false;
  const interim = new InterimSnapshots({
    windowMs: 1000,
    minAgeMs: 1000,
    snapshot: () => {
      started = true;
      return new Promise<number>((resolve) => {
        release = () => {
          finished = true;
          resolve(0);
        };
      });
    },
    onRecords: () => {},
    onError: (error) => assert.fail(error.message),
  });
  await until(() => started, "the pass to start");
  const closed = interim.close();
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(finished, false);
  release();
  await closed;
  assert.equal(finished, true);
});

Deno.test("InterimSnapshots refuses an interval that is not positive", () => {
  const options = {
    windowMs: 1000,
    snapshot: () => Promise.resolve(0),
    onRecords: () => {},
    onError: () => {},
  };
  assert.throws(() => new InterimSnapshots({ ...options, minAgeMs: 0 }), RangeError);
  assert.throws(
    () => new InterimSnapshots({ ...options, minAgeMs: 1000, windowMs: 0 }),
    RangeError,
  );
});
