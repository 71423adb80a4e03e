/**
 * Timers that fire when a test says, for what takes a `setTimer` option (lib/unfollowed_watch.ts,
 * lib/sweeps.ts): the delays asked for, and the callback pending.
 */
import assert from "node:assert/strict";

/** Lets the promises a fired callback started settle. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

export function manualTimers() {
  const delays: number[] = [];
  let pending: (() => void) | undefined;
  const setTimer = (fn: () => void, ms: number) => {
    delays.push(ms);
    pending = fn;
    return () => pending = undefined;
  };
  return {
    setTimer,
    delays,
    /** Fires the pending timer, then lets what it starts settle. */
    fire: async () => {
      const fn = pending;
      pending = undefined;
      assert.ok(fn, "a timer is pending");
      fn();
      await settle();
    },
    pending: () => pending !== undefined,
  };
}
