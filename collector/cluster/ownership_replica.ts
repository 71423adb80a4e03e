/**
 * A node's copy of the cluster's ownership map: an {@linkcode Attributor} fed, in stream order,
 * with every entry of `FLOW_OWNERSHIP` (an ordered consumer from the first entry kept). Every
 * node applies the same entries in the same order, so every node's map holds the same ranges;
 * a node that starts reads the whole log (the `retention` window) before it takes attribution
 * work ({@linkcode OwnershipReplica.caughtUp}).
 *
 * @module
 */

import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
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

interface Waiter {
  sequence: number;
  resolve(): void;
}

/** See the module documentation. */
export class OwnershipReplica {
  /** The map (and the attribution rules over it). */
  readonly attributor: Attributor;
  /** Resolves once every entry that existed at start is applied. */
  readonly caughtUp: Promise<void>;
  readonly #options: ReplicaOptions;
  #applied = 0;
  #appliedAtMs = 0;
  #waiters: Waiter[] = [];
  #stop?: () => Promise<void>;

  private constructor(options: ReplicaOptions, target: number) {
    this.#options = options;
    this.attributor = new Attributor(options);
    this.caughtUp = this.waitFor(target);
  }

  /** Starts reading the log; see {@linkcode caughtUp}. */
  static async start(
    js: JetStreamClient,
    jsm: JetStreamManager,
    options: ReplicaOptions,
  ): Promise<OwnershipReplica> {
    const info = await jsm.streams.info(STREAMS.ownership);
    const replica = new OwnershipReplica(options, info.state.last_seq);
    const consumer = await js.consumers.get(STREAMS.ownership);
    const messages = await consumer.consume({ max_messages: 1024 });
    const reading = (async () => {
      for await (const m of messages) replica.#apply(m.seq, m.data);
    })().catch((error) => {
      options.log("error", `Cannot read the ownership log: ${errorText(error)}`);
    });
    replica.#stop = async () => {
      await messages.close();
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

  /** Resolves once the entry with stream sequence `sequence` (and all before) is applied. */
  waitFor(sequence: number): Promise<void> {
    if (sequence <= this.#applied) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ sequence, resolve });
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
