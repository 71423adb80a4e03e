/**
 * Timers that an AbortSignal can cut short, and timers that return what cancels them.
 *
 * @module
 */

/** Runs `fn` after `ms`, and returns what cancels it (tests pass their own, to fire at will). */
export type SetTimer = (fn: () => void, ms: number) => () => void;

/** {@linkcode SetTimer} on `setTimeout`. */
export function setTimer(fn: () => void, ms: number): () => void {
  const timer = setTimeout(fn, ms);
  return () => clearTimeout(timer);
}

/**
 * Waits `ms`, or less if `signal` aborts first.
 *
 * @param ms how long to wait
 * @param signal cuts the wait short
 * @returns true when the full time passed, false when aborted
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = (completed: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      resolve(completed);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
