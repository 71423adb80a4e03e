/**
 * The collector's ingest path without HTTP: validate a batch, learn its heartbeats, attribute
 * its flows, settle held flows, and store it all in one transaction. Used by the HTTP server
 * and by the benchmark; synchronous, so batches never interleave.
 *
 * @example
 * ```ts
 * import { FlowStore } from "./store.ts";
 * import { Ingestor } from "./ingest.ts";
 * declare const cborBytes: Uint8Array;
 * using store = FlowStore.open("flows.db");
 * const ingestor = Ingestor.open(store, { holdNs: 120_000_000_000n });
 * const result = ingestor.ingestBody(cborBytes); // throws WireFormatError when invalid
 * ```
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { batchDecoder, type DecodedBatch, type DecodeOptions } from "../lib/wire.ts";
import { Attributor, type AttributorOptions, remoteEndpoint, type Verdict } from "./attributor.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { hexOf } from "../lib/bytes.ts";
import { encodeFlowId, formatFlowId, hasFlowId } from "../lib/flow_id.ts";
import type { OwnershipRange } from "./ownership.ts";
import type { BatchWritten, FlowStore, LatestRecord } from "./store.ts";
import { DEFAULT_MAX_CLOCK_SKEW_NS } from "./defaults.ts";

/** Tuning of {@linkcode Ingestor}. */
export interface IngestOptions extends AttributorOptions {
  /** How long ownership ranges are kept, counted back from now. Default 1 h. */
  retentionNs?: bigint;
  /** Wall clock in ns since the epoch; injectable for tests. */
  now?: () => bigint;
}

/** What one batch did. */
export interface IngestResult {
  /** The batch was stored before (same hostname and sequence): nothing was written. */
  readonly duplicate: boolean;
  readonly hostname: string;
  readonly sequence: number;
  /** Flows in the batch. */
  readonly flows: number;
  /**
   * Flows of this batch not stored because a flow with their flow ID already was (sent before
   * in another batch); the counts below leave them out.
   */
  readonly repeatedFlows: number;
  /**
   * Records of this batch that moved a stored open flow on (a later interim record, or its final
   * one); the counts below leave them out too: the flow was attributed by its first record.
   */
  readonly updatedFlows: number;
  /** Flows of this batch attributed at once. */
  readonly attributed: number;
  /** Flows of this batch held for a later heartbeat (stored as `pending`). */
  readonly pending: number;
  /** Flows of this batch in a contested or unreachable (too old) stretch. */
  readonly unattributed: number;
  /** Held flows of earlier batches that this batch settled. */
  readonly settled: number;
}

/**
 * The result of a batch taken without ingesting its flows here: a repeat, or (`duplicate` false)
 * a batch a cluster node handed on to the stage that attributes it.
 */
export function batchTaken(
  batch: DecodedBatch,
  duplicate: boolean,
): IngestResult {
  return {
    duplicate,
    hostname: batch.header.host.hostname,
    sequence: batch.header.sequence,
    flows: batch.flows.length,
    repeatedFlows: 0,
    updatedFlows: 0,
    attributed: 0,
    pending: 0,
    unattributed: 0,
    settled: 0,
  };
}

/** Ownership is pruned this often at most, and four times per retention period at least. */
const PRUNE_EVERY_NS = 60_000_000_000n;

/**
 * A batch arrived under a (hostname, sequence) already stored with other content: the exporter
 * reused a sequence number (a spool restored from a copy, two hosts with one name). Nothing is
 * stored; the HTTP server answers 409.
 */
export class BatchConflictError extends Error {
  /** Creates the error; `message` is one sentence-case line naming the batch. */
  constructor(message: string) {
    super(message);
    this.name = "BatchConflictError";
  }
}

/**
 * The refusal of batch `hostname:sequence` whose digest is `digest` when `stored` is stored
 * under that name; the cluster collector refuses with the same words.
 */
export function batchConflict(
  hostname: string,
  sequence: number,
  stored: Uint8Array,
  digest: Uint8Array,
): BatchConflictError {
  return new BatchConflictError(
    `Batch ${hostname}:${sequence} is already stored with other content (SHA-256 ${
      hexOf(stored).slice(0, 16)
    }…, this one ${
      hexOf(digest).slice(0, 16)
    }…): the exporter reused a sequence number (two hosts named alike, or a spool restored from a copy)`,
  );
}

/**
 * A batch holds a time the collector's clock says cannot be true yet: the exporter's clock is
 * wrong (or the batch forged). Nothing is stored; the HTTP server answers 400.
 */
export class ImplausibleBatchError extends Error {
  /** Creates the error; `message` is one sentence-case line naming the field. */
  constructor(message: string) {
    super(message);
    this.name = "ImplausibleBatchError";
  }
}

/**
 * Refuses a batch whose window or a flow ends more than `maxClockSkewNs` after `nowNs`: an
 * exporter's clock that far ahead would make its flows look like the future. Ends are enough:
 * the wire format holds every start to its end (lib/wire.ts). The HTTP server asks this of
 * every batch, whichever backend stores it.
 *
 * @throws {ImplausibleBatchError} naming the field, its distance ahead and the option
 */
export function checkNotInFuture(
  { header, flows }: DecodedBatch,
  nowNs: bigint,
  maxClockSkewNs: bigint = DEFAULT_MAX_CLOCK_SKEW_NS,
): void {
  const latest = nowNs + maxClockSkewNs;
  const refuse = (field: string, ns: bigint) =>
    new ImplausibleBatchError(
      `${field} ${ns} is ${seconds(ns - nowNs)} s ahead of the collector's clock, more than the ${
        seconds(maxClockSkewNs)
      } s allowed (check the exporter's clock; collector --max-clock-skew-seconds)`,
    );
  if (header.windowEndNs > latest) throw refuse("Batch: window_end_ns", header.windowEndNs);
  for (let i = 0; i < flows.length; i++) {
    if (flows[i].tEndNs > latest) throw refuse(`Flow ${i}: t_end_ns`, flows[i].tEndNs);
  }
}

/**
 * The digest {@linkcode Ingestor.ingest} compares: SHA-256 of the batch body (uncompressed
 * CBOR), as the exporter spooled it and sends it again on every retry.
 */
export function batchDigest(body: Uint8Array): Uint8Array {
  return createHash("sha256").update(body).digest();
}

/** Validates, attributes and stores batches; see the module documentation. */
export class Ingestor {
  readonly #store: FlowStore;
  readonly #attributor: Attributor;
  readonly #retentionNs: bigint;
  readonly #pruneEveryNs: bigint;
  readonly #now: () => bigint;
  #lastPruneNs = 0n;

  private constructor(store: FlowStore, options: IngestOptions) {
    this.#store = store;
    this.#attributor = new Attributor(options);
    this.#retentionNs = options.retentionNs ?? 3_600_000_000_000n;
    const quarter = this.#retentionNs / 4n;
    this.#pruneEveryNs = quarter < PRUNE_EVERY_NS ? quarter : PRUNE_EVERY_NS;
    this.#now = options.now ?? wallClockNs;
  }

  /**
   * Creates an ingestor on `store`, replaying its persisted ownership ranges and held flows.
   */
  static open(store: FlowStore, options: IngestOptions = {}): Ingestor {
    const ingestor = new Ingestor(store, options);
    const attributor = ingestor.#attributor;
    // The horizon first, then the ranges, then how far each key's forgotten ranges reached: a
    // key answers as far back as it did before the restart, and one without a record of that
    // nothing before the horizon (see OwnershipMap).
    ingestor.#prune(ingestor.#now());
    for (const range of store.loadRanges()) attributor.restoreRange(range);
    for (const [key, untilNs] of store.loadReach()) attributor.ownership.restoreReach(key, untilNs);
    for (const [ipKey, endNs] of store.loadShared()) attributor.restoreShared(ipKey, endNs);
    ingestor.#reloadHeld();
    return ingestor;
  }

  /** The attributor (ownership map and held flows), for inspection. */
  get attributor(): Attributor {
    return this.#attributor;
  }

  /**
   * Decodes and validates an uncompressed CBOR batch body, then ingests it with its digest.
   *
   * @param body the batch body
   * @param options the decoder's limits
   * @throws {WireFormatError} when the body does not match the schema (nothing is stored);
   *   {@linkcode BatchConflictError} as {@linkcode ingest}
   */
  ingestBody(body: Uint8Array, options: DecodeOptions = {}): IngestResult {
    return this.ingest(batchDecoder(options)(body), batchDigest(body));
  }

  /**
   * Ingests a decoded batch. A batch whose (hostname, sequence) is stored already is a retry
   * when its digest matches (or either digest is unknown): reported, not stored again.
   *
   * @param batch the decoded batch
   * @param digest {@linkcode batchDigest} of its body, stored with it
   * @throws {BatchConflictError} when the stored batch has another digest (nothing is stored)
   */
  ingest(batch: DecodedBatch, digest?: Uint8Array): IngestResult {
    const { header, flows } = batch;
    const hostname = header.host.hostname;
    const stored = this.#store.batchDigest(hostname, header.sequence);
    if (stored !== undefined) {
      if (
        stored !== null && digest !== undefined &&
        (stored.length !== digest.length || !timingSafeEqual(stored, digest))
      ) {
        throw batchConflict(hostname, header.sequence, stored, digest);
      }
      return batchTaken(batch, true);
    }
    checkInterimCounters(this.#store, flows);
    const now = this.#now();
    const attributor = this.#attributor;
    const observation = attributor.observe(hostname, flows);
    const remoteKeys: string[] = new Array(flows.length);
    const verdicts: Verdict[] = new Array(flows.length);
    for (let i = 0; i < flows.length; i++) {
      const remote = attributor.endpoint(hostname, flows[i]);
      remoteKeys[i] = remote.ipKey;
      verdicts[i] = attributor.attribute(remote);
    }
    const resolutions = attributor.retry();
    const ranges = new Map<string, Map<string, OwnershipRange[]>>();
    const reach = new Map<string, bigint>();
    for (const [key, workloads] of observation.changed) {
      reach.set(key, attributor.ownership.reach(key)!);
      const byWorkload = new Map<string, OwnershipRange[]>();
      for (const workload of workloads) {
        byWorkload.set(workload, attributor.ownership.ranges(key, workload));
      }
      ranges.set(key, byWorkload);
    }
    const shared = new Map<string, bigint>();
    const allShared = attributor.shared();
    for (const ipKey of observation.sharedChanged) shared.set(ipKey, allShared.get(ipKey)!);
    let written: BatchWritten;
    try {
      written = this.#store.writeBatch({
        header,
        digest,
        flows,
        remoteKeys,
        verdicts,
        receivedNs: now,
        resolutions,
        revocations: observation.revocations,
        ranges,
        reach,
        shared,
      });
    } catch (error) {
      // The settled flows are still pending in the database: hold them again.
      this.#reloadHeld();
      throw error;
    }
    // A repeated or moved-on flow (id 0: its flow ID was stored before) is known only once
    // written; its heartbeat above was learned, its verdict is its first record's.
    const { ids, updated } = written;
    let notNew = 0;
    let attributed = 0;
    let pending = 0;
    for (let i = 0; i < flows.length; i++) {
      const status = verdicts[i].status;
      if (ids[i] === 0) notNew++;
      else if (status === "attributed") attributed++;
      else if (status === "pending") {
        pending++;
        const f = flows[i];
        attributor.hold(
          ids[i],
          remoteEndpoint(remoteKeys[i], f.remotePort, f.direction, f.tStartNs),
          now,
        );
      }
    }
    this.#store.resolve(attributor.expire(now));
    const repeatedFlows = notNew - updated;
    return {
      ...batchTaken(batch, false),
      repeatedFlows,
      updatedFlows: updated,
      attributed,
      pending,
      unattributed: flows.length - repeatedFlows - updated - attributed - pending,
      settled: resolutions.length,
    };
  }

  /**
   * Periodic work: gives up on held flows past the hold delay (stored as `unattributed`) and,
   * once a minute (or a quarter of the retention, if shorter), forgets ownership older than the
   * retention.
   *
   * @returns the number of held flows given up on.
   */
  tick(): number {
    const now = this.#now();
    const expired = this.#attributor.expire(now);
    this.#store.resolve(expired);
    if (now - this.#lastPruneNs >= this.#pruneEveryNs) this.#prune(now);
    return expired.length;
  }

  #prune(now: bigint): void {
    this.#lastPruneNs = now;
    const horizon = now - this.#retentionNs;
    this.#attributor.prune(horizon);
    this.#store.pruneOwnership(horizon, this.#attributor.ownership.slackNs);
  }

  #reloadHeld(): void {
    const attributor = this.#attributor;
    attributor.clearHeld();
    for (const p of this.#store.loadPending()) {
      attributor.hold(
        p.id,
        remoteEndpoint(p.remoteKey, p.remotePort, p.direction, p.tStartNs),
        p.receivedNs,
      );
    }
  }
}

/** The counters {@linkcode checkInterimCounters} holds to order, with their wire names. */
const MONOTONIC_COUNTERS = [
  ["bytesSent", "bytes_sent"],
  ["bytesRetrans", "bytes_retrans"],
  ["bytesAcked", "bytes_acked"],
  ["bytesReceived", "bytes_received"],
] as const;

/**
 * Refuses an interim record whose counters go backwards against another record of its flow:
 * the stored one, or one before it in the batch. A record later in time must not count fewer
 * bytes, an earlier one not more. The 64-bit byte counters are checked; the 32-bit segment
 * counters are not, as a flow open for days may wrap them. Final records are the kernel's last
 * word on a flow and are taken as they are.
 *
 * @throws {ImplausibleBatchError} naming the flow, the field and both values
 */
function checkInterimCounters(store: FlowStore, flows: readonly FlowRecord[]): void {
  // The cookies of the interim records pick the records to look at without a key for each.
  const interim = new Set<bigint>();
  for (const f of flows) if (f.recordKind === "interim" && hasFlowId(f)) interim.add(f.cookie);
  if (interim.size === 0) return;
  const latest = new Map<string, LatestRecord>();
  for (let i = 0; i < flows.length; i++) {
    const f = flows[i];
    if (!interim.has(f.cookie) || !hasFlowId(f)) continue;
    const key = formatFlowId(f.bootId, f.cookie);
    const known = latest.get(key) ?? store.latestRecord(encodeFlowId(f.bootId, f.cookie));
    if (known !== undefined && f.recordKind === "interim") {
      const later = f.tEndNs >= known.tEndNs;
      for (const [field, name] of MONOTONIC_COUNTERS) {
        if (later ? f[field] >= known[field] : f[field] <= known[field]) continue;
        throw new ImplausibleBatchError(
          `Flow ${i}: ${name} ${f[field]} is ${later ? "below" : "above"} the ${
            known[field]
          } that ${
            later ? "an earlier" : "a later"
          } record of flow ${key} reported at t_end_ns ${known.tEndNs} (the counters of one flow never go backwards)`,
        );
      }
    }
    if (known === undefined || f.tEndNs >= known.tEndNs) latest.set(key, f);
    else latest.set(key, known);
  }
}

/** Whole seconds of `ns`, rounded down, for messages. */
function seconds(ns: bigint): bigint {
  return ns / 1_000_000_000n;
}

function wallClockNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}
