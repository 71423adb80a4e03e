/**
 * Interim records: at each batch window's end, a snapshot of every TCP socket the agent follows
 * that has been open longer than the interim interval, so that a long-lived connection is seen,
 * accounted and attributed while it lives. The pass walks the open sockets once per window, off
 * the per-event path; its records join the window open when it runs (their snapshot time falls
 * in it), through the same intake as the kernel's close records.
 *
 * @example
 * ```ts
 * import { InterimSnapshots } from "./interim.ts";
 * declare const snapshot: (minAgeNs: bigint, onRecords: (b: Uint8Array) => void) => Promise<number>;
 * await using _interim = new InterimSnapshots({
 *   windowMs: 60_000,
 *   minAgeMs: 60_000,
 *   snapshot,
 *   onRecords: (bytes) => {},
 *   onError: (error) => console.error(error.message),
 * });
 * ```
 *
 * @module
 */

/** Options of {@linkcode InterimSnapshots}. */
export interface InterimOptions {
  /** The batch window: a pass runs at each of its wall-clock-aligned ends. */
  windowMs: number;
  /** Sockets open at least this long get an interim record; more than 0. */
  minAgeMs: number;
  /**
   * Runs one pass over the open sockets, handing each chunk of raw records (valid only during
   * the call) to `onRecords`; resolves to the number of records.
   */
  snapshot: (minAgeNs: bigint, onRecords: (bytes: Uint8Array) => void) => Promise<number>;
  /** Takes a chunk of interim records into the pipeline. */
  onRecords: (bytes: Uint8Array) => void;
  /** After each pass: how many records it made and how long it took, ms. */
  onPass?: (records: number, elapsedMs: number) => void;
  /** A pass failed; the next window's pass runs all the same. */
  onError: (error: Error) => void;
  /** Wall clock, ms since the epoch (tests). */
  now?: () => number;
}

/** Runs the interim pass at every window end until closed. */
export class InterimSnapshots implements AsyncDisposable {
  readonly #options: InterimOptions;
  readonly #now: () => number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> | undefined;
  #closed = false;

  /**
   * Schedules the first pass at the end of the window open now.
   *
   * @throws {RangeError} when `minAgeMs` is not positive or `windowMs` is not a positive integer
   */
  constructor(options: InterimOptions) {
    if (!(options.minAgeMs > 0) || !Number.isInteger(options.windowMs) || options.windowMs < 1) {
      throw new RangeError(
        `Cannot schedule interim records every ${options.windowMs} ms for sockets open ${options.minAgeMs} ms: both must be positive`,
      );
    }
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed) return;
    const { windowMs } = this.#options;
    const now = this.#now();
    const nextEnd = (Math.floor(now / windowMs) + 1) * windowMs;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#running = this.#pass().finally(() => {
        this.#running = undefined;
        this.#schedule();
      });
    }, nextEnd - now);
  }

  async #pass(): Promise<void> {
    const { snapshot, onRecords, onPass, onError, minAgeMs } = this.#options;
    const started = performance.now();
    try {
      const records = await snapshot(BigInt(minAgeMs) * 1_000_000n, onRecords);
      onPass?.(records, performance.now() - started);
    } catch (error) {
      onError(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /** Stops scheduling passes and waits for a running one; safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
