/**
 * The sweep of the flow states (docs/capture.md): a socket whose close and destroy the kernel ran
 * no program for left its state behind, and a sweep pass finds the socket gone and records it. A
 * pass runs at start, then every {@linkcode SWEEP_INTERVAL_MS}, one at a time, and a last one at
 * disposal, so that the agent that stops records what closed unseen before its last drain. A
 * swept record ends when the agent last saw the socket open, so the interval bounds how early.
 *
 * @example
 * ```ts
 * import { Sweeps } from "./sweeps.ts";
 * declare const sweep: () => Promise<number>;
 * await using _sweeps = new Sweeps({
 *   sweep,
 *   onSwept: (records) => console.log(`${records} closes recorded by the sweep`),
 *   onError: (error) => console.error(error.message),
 * });
 * ```
 *
 * @module
 */
import { type SetTimer, setTimer } from "./_sleep.ts";

/**
 * Time between sweep passes. A pass checks every flow state's socket (docs/benchmarks.md has its
 * cost); while agents run, a swept record's end is at most this much before the socket's close.
 */
export const SWEEP_INTERVAL_MS = 10_000;

/** Options of {@linkcode Sweeps}. */
export interface SweepsOptions {
  /** Runs one pass; resolves to the records it made, or -1 where the kernel has no sweep. */
  sweep: () => Promise<number>;
  /** A pass recorded `records` (more than 0) sockets. */
  onSwept: (records: number) => void;
  /** A pass failed; the next one runs all the same. */
  onError: (error: Error) => void;
  /** Time between passes, ms (default {@linkcode SWEEP_INTERVAL_MS}). */
  intervalMs?: number;
  /** Runs `fn` after `ms`, and returns what cancels it (default `setTimeout`; tests pass theirs). */
  setTimer?: SetTimer;
}

/** Runs a sweep pass at start and then every interval, until disposed. */
export class Sweeps implements AsyncDisposable {
  readonly #options: SweepsOptions;
  #cancelTimer = () => {};
  #running: Promise<void>;
  #closed = false;
  #unsupported = false;

  constructor(options: SweepsOptions) {
    this.#options = options;
    this.#running = this.#pass();
  }

  async #pass(): Promise<void> {
    await this.#sweepOnce();
    if (this.#unsupported || this.#closed) return;
    this.#cancelTimer = (this.#options.setTimer ?? setTimer)(
      () => this.#running = this.#pass(),
      this.#options.intervalMs ?? SWEEP_INTERVAL_MS,
    );
  }

  async #sweepOnce(): Promise<void> {
    let records = 0;
    try {
      records = await this.#options.sweep();
    } catch (error) {
      this.#options.onError(error instanceof Error ? error : new Error(String(error)));
    }
    if (records > 0) this.#options.onSwept(records);
    // No sweep on this kernel: nothing to repeat.
    if (records < 0) this.#unsupported = true;
  }

  /** Stops the passes, waiting for one under way, then runs the last one. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#closed = true;
    this.#cancelTimer();
    await this.#running;
    if (!this.#unsupported) await this.#sweepOnce();
  }
}
