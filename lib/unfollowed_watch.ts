/**
 * The state tracepoint catches the closes of sockets sock_ops does not follow: those open since
 * before the capture, in network namespaces the seeding cannot reach. While any is left, the
 * agent counts them again now and then, and the count detaches the tracepoint once none is left
 * (docs/capture.md). A count walks every process's descriptors (about 7 ms per 10 000 sockets),
 * so the delay between counts doubles, from a minute up to an hour.
 *
 * @example
 * ```ts
 * import { UnfollowedWatch } from "./unfollowed_watch.ts";
 * declare const agent: {
 *   stats(): { stateTracepoint: boolean; unfollowed: number };
 *   followCheck(): Promise<number>;
 * };
 * await using _watch = new UnfollowedWatch({
 *   agent,
 *   onDetached: () => console.log("the state tracepoint is detached"),
 *   onError: (error) => console.error(error.message),
 * });
 * ```
 *
 * @module
 */

import { type SetTimer, setTimer } from "./_sleep.ts";

/** Options of {@linkcode UnfollowedWatch}. */
export interface UnfollowedWatchOptions {
  /** The capture: whether the tracepoint is attached, the last count, and a new count. */
  agent: {
    stats(): { stateTracepoint: boolean; unfollowed: number };
    followCheck(): Promise<number>;
  };
  /** The count found none left: the tracepoint is detached. */
  onDetached: () => void;
  /** A count failed: the tracepoint stays attached, and no count follows. */
  onError: (error: Error) => void;
  /** Delay before the first count, ms (default a minute); each next one waits twice as long. */
  firstDelayMs?: number;
  /** The longest delay between counts, ms (default an hour). */
  maxDelayMs?: number;
  /** Runs `fn` after `ms`, and returns what cancels it (default `setTimeout`; tests pass theirs). */
  setTimer?: SetTimer;
}

/** Counts the unfollowed sockets again, less and less often, until none is left. */
export class UnfollowedWatch implements AsyncDisposable {
  readonly #options: UnfollowedWatchOptions;
  #delayMs: number;
  #cancelTimer = () => {};
  #counting: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(options: UnfollowedWatchOptions) {
    this.#options = options;
    this.#delayMs = options.firstDelayMs ?? 60_000;
    this.#schedule();
  }

  #schedule(): void {
    const { stateTracepoint, unfollowed } = this.#options.agent.stats();
    // Detached, or no count can prove it here (unfollowed -1): nothing to wait for.
    if (this.#stopped || !stateTracepoint || unfollowed <= 0) return;
    this.#cancelTimer = (this.#options.setTimer ?? setTimer)(
      () => this.#counting = this.#count(),
      this.#delayMs,
    );
    this.#delayMs = Math.min(2 * this.#delayMs, this.#options.maxDelayMs ?? 3_600_000);
  }

  async #count(): Promise<void> {
    try {
      if (await this.#options.agent.followCheck() === 0) return this.#options.onDetached();
    } catch (error) {
      return this.#options.onError(error instanceof Error ? error : new Error(String(error)));
    }
    this.#schedule();
  }

  /** Stops counting, after a count under way (the agent must not close before it ends). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#stopped = true;
    this.#cancelTimer();
    await this.#counting;
  }
}
