/**
 * UnfollowedWatch against a fake capture and a clock of the test's own: it counts again, twice as
 * long apart each time up to its maximum, until none is left; stops at an error; never starts
 * when there is nothing to wait for; and its disposal waits for a count under way.
 */
import assert from "node:assert/strict";
import { UnfollowedWatch } from "../lib/unfollowed_watch.ts";
import { manualTimers } from "./_manual_timers.ts";

/** A capture whose counts resolve to `counts` in turn; unfollowed starts at `first`. */
function fakeAgent(first: number, counts: (() => Promise<number>)[]) {
  let unfollowed = first;
  let calls = 0;
  return {
    calls: () => calls,
    agent: {
      stats: () => ({ stateTracepoint: unfollowed !== 0, unfollowed }),
      followCheck: async () => {
        unfollowed = await counts[calls++]();
        return unfollowed;
      },
    },
  };
}

const counts = (...ns: number[]) => ns.map((n) => () => Promise.resolve(n));

Deno.test("counts again, twice as long apart each time up to the maximum, until none is left", async () => {
  const { agent, calls } = fakeAgent(5, counts(4, 3, 2, 1, 0));
  const clock = manualTimers();
  let detached = 0;
  await using _watch = new UnfollowedWatch({
    agent,
    onDetached: () => detached++,
    onError: (error) => assert.fail(error.message),
    firstDelayMs: 60_000,
    maxDelayMs: 300_000,
    setTimer: clock.setTimer,
  });
  for (let i = 0; i < 5; i++) await clock.fire();
  assert.equal(calls(), 5);
  assert.equal(detached, 1);
  assert.deepEqual(clock.delays, [60_000, 120_000, 240_000, 300_000, 300_000]);
  assert.equal(clock.pending(), false, "no count after the tracepoint is detached");
});

Deno.test("a minute first, an hour at most, by default", async () => {
  const { agent } = fakeAgent(5, counts(...Array(8).fill(1)));
  const clock = manualTimers();
  await using _watch = new UnfollowedWatch({
    agent,
    onDetached: () => assert.fail("not detached"),
    onError: (error) => assert.fail(error.message),
    setTimer: clock.setTimer,
  });
  for (let i = 0; i < 7; i++) await clock.fire();
  assert.deepEqual(
    clock.delays,
    [60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000],
  );
});

Deno.test("a failed count ends the watch: the tracepoint stays", async () => {
  const { agent, calls } = fakeAgent(2, [() => Promise.reject(new Error("Cannot count"))]);
  const clock = manualTimers();
  const errors: string[] = [];
  await using _watch = new UnfollowedWatch({
    agent,
    onDetached: () => assert.fail("not detached"),
    onError: (error) => errors.push(error.message),
    setTimer: clock.setTimer,
  });
  await clock.fire();
  assert.deepEqual(errors, ["Cannot count"]);
  assert.equal(calls(), 1);
  assert.equal(clock.pending(), false, "no count follows an error");
});

Deno.test("nothing to wait for: detached already, or no count can tell", async () => {
  for (const first of [0, -1]) {
    const clock = manualTimers();
    await using _watch = new UnfollowedWatch({
      agent: fakeAgent(first, []).agent,
      onDetached: () => assert.fail("no count"),
      onError: (error) => assert.fail(error.message),
      setTimer: clock.setTimer,
    });
    assert.equal(clock.pending(), false, `unfollowed ${first}: no count scheduled`);
  }
});

Deno.test("disposal waits for the count under way, and no count follows it", async () => {
  let finish = (_n: number) => {};
  const { agent, calls } = fakeAgent(2, [() => new Promise((resolve) => finish = resolve)]);
  const clock = manualTimers();
  const watch = new UnfollowedWatch({
    agent,
    onDetached: () => assert.fail("not detached"),
    onError: (error) => assert.fail(error.message),
    setTimer: clock.setTimer,
  });
  await clock.fire();
  assert.equal(calls(), 1);
  let disposed = false;
  const disposing = watch[Symbol.asyncDispose]().then(() => disposed = true);
  await Promise.resolve();
  assert.equal(disposed, false, "the count is still under way");
  finish(1);
  await disposing;
  assert.equal(clock.pending(), false, "no count after disposal");
});
