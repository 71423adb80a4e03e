/**
 * Kernel event time (CLOCK_BOOTTIME ns) to wall-clock time (ns since the
 * Unix epoch). The offset between the two moves when the wall clock is
 * stepped or slewed, so it is re-measured periodically; records carry wall
 * time computed with the offset in use when they were decoded, and batches
 * carry that offset.
 *
 * @module
 */

/** One measurement of wall clock minus kernel clock. */
export interface ClockReading {
  offsetNs: bigint;
  /** Width of the window the reading was taken in, ns. */
  uncertaintyNs: bigint;
}

/** The offset in use and when to re-measure it. */
export class ClockAnchor {
  #offsetNs: bigint;
  #anchoredAtMs: number;
  readonly #measure: () => ClockReading;
  readonly #intervalMs: number;
  readonly #nowMs: () => number;

  /**
   * @param measure takes a reading (ffi: fe_clock_offset)
   * @param intervalMs how often {@linkcode ClockAnchor.offsetNs} re-measures
   * @param nowMs monotonic milliseconds (injected for tests)
   */
  constructor(measure: () => ClockReading, intervalMs = 60_000, nowMs = () => performance.now()) {
    this.#measure = measure;
    this.#intervalMs = intervalMs;
    this.#nowMs = nowMs;
    this.#offsetNs = measure().offsetNs;
    this.#anchoredAtMs = nowMs();
  }

  /** The offset to use now, re-measured when the interval has passed. */
  offsetNs(): bigint {
    const now = this.#nowMs();
    if (now - this.#anchoredAtMs >= this.#intervalMs) {
      this.#offsetNs = this.#measure().offsetNs;
      this.#anchoredAtMs = now;
    }
    return this.#offsetNs;
  }
}

/**
 * Converts a kernel timestamp to wall-clock ns since the epoch.
 *
 * @example
 * ```ts
 * toWallNs(5_000n, 1_700_000_000_000_000_000n); // 1700000000000005000n
 * ```
 */
export function toWallNs(kernelNs: bigint, offsetNs: bigint): bigint {
  return kernelNs + offsetNs;
}
