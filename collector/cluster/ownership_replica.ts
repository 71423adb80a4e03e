/**
 * A node's copy of the cluster's ownership map: an {@linkcode Attributor} fed, in stream order,
 * with every entry of `FLOW_OWNERSHIP` (an ordered consumer from the first entry kept). Every
 * node applies the same entries in the same order, so every node's map holds the same ranges;
 * a node that starts reads the whole log (the `retention` window) before it takes attribution
 * work ({@linkcode OwnershipReplica.caughtUp}).
 *
 * @module
 */

import {
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { errorText } from "../../lib/error_text.ts";
import type { Logger } from "../../lib/logger.ts";
import { Attributor, type AttributorOptions, type Revocation } from "../attributor.ts";
import { decodeHeartbeats } from "./messages.ts";
import { STREAMS } from "./streams.ts";

/** Options of {@linkcode OwnershipReplica.start}. */
export interface ReplicaOptions extends AttributorOptions {
  /** How long ownership is kept, counted back from now. */
  retentionNs: bigint;
  /** Receives the revocations each entry causes, with the entry's stream sequence. */
  onRevocations(sequence: number, revocations: readonly Revocation[]): void;
  log: Logger;
  now: () => bigint;
}

/** How long the reader may keep an entry that exists waiting before it is started again. */
export const STALL_MS = 10_000;

interface Waiter {
  sequence: number;
  resolve(): void;
}

/** See the module documentation. */
export class OwnershipReplica {
  /** The map (and the attribution rules over it). */
  readonly attributor: Attributor;
  /** Resolves true once every entry that existed at start is applied (false if closed first). */
  readonly caughtUp: Promise<boolean>;
  readonly #options: ReplicaOptions;
  #applied = 0;
  #appliedAtMs = 0;
  #waiters: Waiter[] = [];
  #messages?: ConsumerMessages;
  #stop?: () => Promise<void>;

  private constructor(options: ReplicaOptions, target: number) {
    this.#options = options;
    this.attributor = new Attributor(options);
    // The log holds what the retention kept, not what came before: a key it replays answers
    // nothing before the horizon (see OwnershipMap), as no evidence before it is at hand.
    this.attributor.prune(options.now() - options.retentionNs);
    this.caughtUp = (async () => {
      // Each wait that times out restarts a stalled reader (see waitFor).
      while (!await this.waitFor(target, STALL_MS)) if (this.#stop === undefined) return false;
      return true;
    })();
  }

  /** Starts reading the log; see {@linkcode caughtUp}. */
  static async start(
    js: JetStreamClient,
    jsm: JetStreamManager,
    options: ReplicaOptions,
  ): Promise<OwnershipReplica> {
    const info = await jsm.streams.info(STREAMS.ownership);
    const replica = new OwnershipReplica(options, info.state.last_seq);
    let stopped = false;
    // The ordered consumer follows the log across server failures; should its messages end
    // or stall (see waitFor), a new one starts after the last entry applied.
    const reading = (async () => {
      while (!stopped) {
        try {
          const consumer = await js.consumers.get(
            STREAMS.ownership,
            replica.#applied > 0
              ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: replica.#applied + 1 }
              : {},
          );
          const messages = await consumer.consume({ max_messages: 1024 });
          replica.#messages = messages;
          if (stopped) await messages.close();
          for await (const m of messages) replica.#apply(m.seq, m.data);
        } catch (error) {
          if (!stopped) {
            options.log("warn", `Cannot read the ownership log: ${errorText(error)} (retrying)`);
          }
        }
        if (!stopped) await new Promise((resolve) => setTimeout(resolve, 500));
      }
    })();
    replica.#stop = async () => {
      stopped = true;
      await replica.#messages?.close();
      await reading;
    };
    return replica;
  }

  /** Stream sequence of the last entry applied. */
  get applied(): number {
    return this.#applied;
  }

  /** Milliseconds since the last entry was applied (`Infinity` before the first). */
  get ageMs(): number {
    return this.#appliedAtMs === 0 ? Infinity : Date.now() - this.#appliedAtMs;
  }

  /**
   * Resolves once the entry with stream sequence `sequence` (and all before) is applied; with
   * `timeoutMs`, resolves false if that takes longer.
   */
  waitFor(sequence: number, timeoutMs = Infinity): Promise<boolean> {
    if (sequence <= this.#applied) return Promise.resolve(true);
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const waiter: Waiter = { sequence, resolve: () => resolve(true) };
    this.#waiters.push(waiter);
    if (Number.isFinite(timeoutMs)) {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        resolve(false);
        // An entry that exists did not arrive in time: the reader may be stuck on a consumer
        // a lost server held (seen after killing a stream leader). Start a new one.
        const messages = this.#messages;
        this.#messages = undefined;
        if (messages !== undefined) {
          this.#options.log(
            "warn",
            `Ownership log reader stalled at entry ${this.#applied}: starting it again`,
          );
          messages.close().catch(() => {});
        }
      }, timeoutMs);
      promise.then(() => clearTimeout(timer));
    }
    return promise;
  }

  /** Forgets ownership older than the retention. */
  prune(): void {
    this.attributor.prune(this.#options.now() - this.#options.retentionNs);
  }

  /** Stops reading; safe to call twice. */
  async close(): Promise<void> {
    const stop = this.#stop;
    this.#stop = undefined;
    await stop?.();
  }

  #apply(sequence: number, data: Uint8Array): void {
    if (sequence <= this.#applied) return;
    try {
      const observation = this.attributor.learn(decodeHeartbeats(data));
      // The map is shared, the held flows are not kept here: nothing to retry, but retry()
      // also forgets which keys changed.
      this.attributor.retry();
      if (observation.revocations.length > 0) {
        this.#options.onRevocations(sequence, observation.revocations);
      }
    } catch (error) {
      this.#options.log(
        "error",
        `Cannot apply ownership entry ${sequence}: ${errorText(error)} (skipped)`,
      );
    }
    this.#applied = sequence;
    this.#appliedAtMs = Date.now();
    if (this.#waiters.length > 0) {
      const ready = this.#waiters.filter((w) => w.sequence <= sequence);
      this.#waiters = this.#waiters.filter((w) => w.sequence > sequence);
      for (const w of ready) w.resolve();
    }
  }
}
