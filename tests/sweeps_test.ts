/**
 * Sweeps against a fake sweep and timers of the test's own: a pass at start, then one per
 * interval; a failed pass does not stop the next; a kernel without a sweep stops them; disposal
 * waits for a pass under way, runs a last one, and schedules no more.
 */
import assert from "node:assert/strict";
import { SWEEP_INTERVAL_MS, Sweeps, type SweepsOptions } from "../lib/sweeps.ts";
import { manualTimers, settle } from "./_manual_timers.ts";

/** A sweep whose passes resolve (or throw) in turn; counts its calls. */
function fakeSweep(...results: (number | Error)[]) {
  let calls = 0;
  return {
    calls: () => calls,
    sweep: () => {
      const r = results[calls++];
      return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
    },
  };
}

/**
 * Sweeps on `sweep` and the test's timers, noting what each pass recorded and each error;
 * `options` replaces any of that.
 */
function sweepsOn(
  sweep: () => Promise<number>,
  options: Partial<SweepsOptions> = {},
) {
  const clock = manualTimers();
  const swept: number[] = [];
  const errors: string[] = [];
  const sweeps = new Sweeps({
    sweep,
    onSwept: (n) => swept.push(n),
    onError: (error) => errors.push(error.message),
    setTimer: clock.setTimer,
    ...options,
  });
  return { sweeps, clock, swept, errors };
}

Deno.test("sweeps at start, then once per interval, reporting the passes that recorded", async () => {
  const fake = fakeSweep(0, 3, 0, 2, 0);
  const { sweeps, clock, swept, errors } = sweepsOn(fake.sweep);
  await using _sweeps = sweeps;
  await settle();
  assert.equal(fake.calls(), 1, "the first pass runs at start");
  for (let i = 0; i < 3; i++) await clock.fire();
  assert.equal(fake.calls(), 4);
  assert.deepEqual(swept, [3, 2], "only passes that recorded are reported");
  assert.deepEqual(clock.delays, Array(4).fill(SWEEP_INTERVAL_MS));
  assert.deepEqual(errors, []);
});

Deno.test("a failed pass is reported and the next one runs all the same", async () => {
  const fake = fakeSweep(new Error("Cannot sweep the flow states: boom"), 1, 0);
  const { sweeps, clock, swept, errors } = sweepsOn(fake.sweep, { intervalMs: 250 });
  await using _sweeps = sweeps;
  await settle();
  assert.deepEqual(errors, ["Cannot sweep the flow states: boom"]);
  await clock.fire();
  assert.deepEqual(swept, [1]);
  assert.deepEqual(clock.delays, [250, 250]);
});

Deno.test("a kernel without a sweep stops the passes", async () => {
  const fake = fakeSweep(-1);
  const { sweeps, clock, swept, errors } = sweepsOn(fake.sweep);
  await settle();
  assert.equal(fake.calls(), 1);
  assert.equal(clock.pending(), false, "no pass scheduled");
  await sweeps[Symbol.asyncDispose]();
  assert.equal(fake.calls(), 1, "no last pass either");
  assert.deepEqual([swept, errors], [[], []]);
});

Deno.test("disposal waits for the pass under way, runs a last one, and schedules no more", async () => {
  let finish = (_n: number) => {};
  let calls = 0;
  const { sweeps, clock, swept, errors } = sweepsOn(() => {
    calls++;
    return new Promise((resolve) => finish = resolve);
  });
  let disposed = false;
  const disposing = sweeps[Symbol.asyncDispose]().then(() => disposed = true);
  await settle();
  assert.equal(disposed, false, "waits for the pass");
  finish(0);
  await settle();
  assert.equal(calls, 2, "the last pass runs once the one under way ended");
  assert.equal(disposed, false, "waits for the last pass");
  finish(2);
  await disposing;
  assert.deepEqual(swept, [2], "the last pass reports what it recorded");
  assert.equal(clock.pending(), false, "no pass scheduled after disposal");
  assert.deepEqual(errors, []);
});
