/**
 * A cluster collector node (`flowexporter collector --nats URL[,URL…]`): the collector's HTTP
 * API (collector/server.ts, the same validation and limits) in front of a NATS JetStream
 * cluster, with no state of its own. Any number of nodes sit behind any HTTP load balancer.
 *
 * - Ingest: a valid batch's merged heartbeats go to `FLOW_OWNERSHIP` on the batch's own
 *   subject with the SHA-256 of its body, unless an entry is there (one of another digest:
 *   409, as the SQLite collector answers); then the batch, decoded once here and prepared for
 *   the later stages (its ClickHouse rows and the remote ends attribution looks up,
 *   messages.ts), to `FLOW_BATCHES` with message ID `hostname:sequence` (JetStream drops a
 *   repeat within its window); the node answers 200 only once JetStream has acknowledged
 *   both, and 503 with `Retry-After` while it cannot (the agent's spool keeps the batch).
 * - Ownership: every node reads all of `FLOW_OWNERSHIP` into its map (ownership_replica.ts)
 *   and takes attribution work only once it has read what existed when it started.
 * - Attribution: the nodes share the durable `attribution` consumer, so each batch is
 *   attributed by one node, with the SQLite collector's rules (collector/attributor.ts). Its
 *   flows go to `FLOW_OUTPUT` at once (held ones as `pending`); the held ones also go to
 *   `FLOW_HELD`, whose shared `hold` consumer retries them (`nak` with a delay, so a node's loss
 *   loses none) until their owner is known or the hold time is over (`unattributed`).
 * - Revocations: evidence that makes earlier attributions doubtful goes to `FLOW_OUTPUT` too.
 * - Sink (with `clickhouseUrl`): the shared `clickhouse` consumer inserts `FLOW_OUTPUT` into
 *   ClickHouse in batches, the rows ingest wrote with each verdict appended, and each batch's
 *   row (its loss counters) into `batches`; `GET /v1/flows` reads from there.
 *
 * @module
 */

import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import {
  type Consumer,
  jetstream,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstreamManager,
  type JsMsg,
  type StoredMsg,
} from "@nats-io/jetstream";
import { Buffer } from "node:buffer";
import { timingSafeEqual } from "node:crypto";
import { gunzipSync, gzipSync } from "node:zlib";
import type { DecodedBatch } from "../../lib/wire.ts";
import { errorText } from "../../lib/error_text.ts";
import { Log } from "../../lib/log.ts";
import type { Logger } from "../../lib/logger.ts";
import { printable } from "../../lib/printable.ts";
import { MetricsRegistry } from "../../lib/metrics.ts";
import { HttpError } from "../_http_body.ts";
import { ipKeyOfText } from "../_keys.ts";
import { formatIp } from "../../lib/map_layout.ts";
import { gzipChunkSize } from "../../lib/compression.ts";
import type { Revocation, Verdict } from "../attributor.ts";
import { batchConflict, batchDigest, batchTaken, type IngestResult } from "../ingest.ts";
import { cachedGraphSource } from "../graph.ts";
import {
  type CollectorBackend,
  type CollectorServer,
  GRAPH_CACHE_MS,
  RETRY_AFTER_SECONDS,
  serveCollector,
  type ServeOptions,
} from "../server.ts";
import { ClickHouseStore, writeBatchRow, writeFlowRow, writeVerdict } from "./clickhouse_store.ts";
import {
  type BatchEntry,
  decodeAttributed,
  decodeBatchEntry,
  decodeHeld,
  decodeRevocations,
  encodeAttributed,
  encodeBatchEntry,
  encodeHeartbeats,
  encodeHeld,
  encodeRevocations,
  endpointOf,
  EntryError,
  packEndpoints,
} from "./messages.ts";
import { RowBinaryWriter } from "./row_binary.ts";
import { OwnershipReplica, STALL_MS } from "./ownership_replica.ts";
import {
  consumerPlaces,
  CONSUMERS,
  DEFAULT_STREAM_SETTINGS,
  ensureStreams,
  HEADERS,
  ownershipSubject,
  partitionOf,
  partitionSubject,
  STREAMS,
  type StreamSettings,
  SUBJECTS,
} from "./streams.ts";

/** Options of {@linkcode startClusterNode}. */
export interface ClusterNodeOptions extends ServeOptions {
  /** NATS servers to connect to, `nats://host:4222`. */
  natsServers: string[];
  /** ClickHouse's HTTP interface: run the sink and serve `GET /v1/flows` from it. */
  clickhouseUrl?: string;
  /** This node's name, in revocation message IDs and logs. Default the host name. */
  nodeName?: string;
  /** Stream settings; see streams.ts. */
  streams?: Partial<StreamSettings>;
  /** How long a flow waits for its remote owner's heartbeat, s. Default 120. */
  holdSeconds?: number;
  /** Heartbeats of one workload at most this far apart merge, s. Default 30. */
  mergeGapSeconds?: number;
  /** Clock-skew tolerance around ownership ranges, s. Default 1. */
  slackSeconds?: number;
  /** How long ownership ranges are kept, s. Default 3600. */
  retentionSeconds?: number;
  /** How often a held batch is tried again, ms. Default 5000. */
  holdRetryMs?: number;
  /** How long a publish may wait for JetStream's acknowledgement, ms. Default 5000. */
  publishTimeoutMs?: number;
  /**
   * The shared work this node takes besides ingest: attribution (and the hold), and the sink
   * (with `clickhouseUrl`). Default both; the benchmark measures each stage alone.
   */
  work?: { attribution?: boolean; sink?: boolean };
}

/** Counters of one node, for metrics and for tests that wait on a condition. */
export interface ClusterNodeStats {
  /** Batches acknowledged to agents (repeats included). */
  batchesIn: number;
  /** Of those, repeats JetStream already had. */
  batchesRepeated: number;
  /** Batches refused with 503 because JetStream could not take them. */
  batchesRefused: number;
  /** Batches this node attributed. */
  batchesAttributed: number;
  /** Held batches this node settled. */
  heldSettled: number;
  /** Held batches this node tried and put back to wait. */
  heldRetried: number;
  /**
   * Flows this node put on hold. Summed over the nodes, less {@linkcode heldFlowsSettled}'s sum:
   * the flows the cluster holds (a batch redelivered after a node's loss counts again).
   */
  heldFlows: number;
  /** Held flows this node gave a verdict (an owner, or `unattributed` after the hold). */
  heldFlowsSettled: number;
  /** Flows this node's sink inserted into ClickHouse. */
  sinkRows: number;
  /** Failed inserts (the entries are redelivered). */
  sinkErrors: number;
  /** Ownership entries applied (stream sequence of the last one). */
  ownershipApplied: number;
  /** Ranges in the ownership map. */
  mapRanges: number;
  /** Milliseconds since the last ownership entry was applied. */
  mapAgeMs: number;
  /** The node has read the ownership log and takes attribution work. */
  caughtUp: boolean;
}

/** A running node. */
export interface ClusterNode extends AsyncDisposable {
  /** Base URL of its HTTP API. */
  readonly url: string;
  /** Its name. */
  readonly name: string;
  /** Its ownership map. */
  readonly replica: OwnershipReplica;
  /** The ClickHouse store, when it runs the sink. */
  readonly store?: ClickHouseStore;
  stats(): ClusterNodeStats;
  /**
   * Consumer lag: entries not yet delivered plus delivered and not yet acknowledged, per
   * durable consumer (`attribution`, `hold`, `clickhouse`).
   */
  lag(): Promise<Record<string, number>>;
  /** Stops serving, stops taking work (what it holds is redelivered), closes connections. */
  close(): Promise<void>;
}

/** How long an entry of a newer version waits before it is offered to a node again. */
const NEWER_ENTRY_DELAY_MS = 30_000;
/** How long each step of closing a node may take. */
const CLOSE_STEP_MS = 3000;
/** zlib level of the rows a batch entry carries: the fastest; rows repeat much. */
const ROWS_GZIP_LEVEL = 1;
/** Most entries (batches) one sink insert takes. */
const SINK_BATCH = 128;
/** A piece of a sink insert's rows: a new one starts once three quarters are written. */
const SINK_PIECE_BYTES = 1 << 20;

/**
 * Connects to NATS (and ClickHouse), creates missing streams and consumers, and starts serving.
 *
 * @throws an `Error` naming NATS, ClickHouse or the stream when one cannot be used
 */
export async function startClusterNode(options: ClusterNodeOptions): Promise<ClusterNode> {
  const logger = options.logger ?? new Log({ write: (line) => console.error(line) }).logger;
  const log: Logger = (level, message) => logger(level, printable(message));
  const now = options.now ?? (() => BigInt(Date.now()) * 1_000_000n);
  const name = options.nodeName ?? Deno.hostname();
  const settings: StreamSettings = {
    ...DEFAULT_STREAM_SETTINGS,
    retentionSeconds: options.retentionSeconds ?? DEFAULT_STREAM_SETTINGS.retentionSeconds,
    ...options.streams,
  };
  const partitions = settings.partitions;
  /** Where a host's batches, held flows and output go. */
  const subjectOf = (
    subject: "batches" | "held" | "flows",
    hostname: string,
  ) => partitionSubject(subject, partitionOf(hostname, partitions), partitions);
  const holdNs = BigInt(Math.round((options.holdSeconds ?? 120) * 1e9));
  const holdRetryMs = options.holdRetryMs ?? 5000;
  const stats: ClusterNodeStats = {
    batchesIn: 0,
    batchesRepeated: 0,
    batchesRefused: 0,
    batchesAttributed: 0,
    heldSettled: 0,
    heldRetried: 0,
    heldFlows: 0,
    heldFlowsSettled: 0,
    sinkRows: 0,
    sinkErrors: 0,
    ownershipApplied: 0,
    mapRanges: 0,
    mapAgeMs: Infinity,
    caughtUp: false,
  };

  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: options.natsServers,
      name: `flowexporter-collector ${name}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      timeout: 10_000,
    });
  } catch (error) {
    throw new Error(
      `Cannot connect to NATS at ${options.natsServers.join(",")}: ${
        errorText(error)
      } (check --nats)`,
      { cause: error },
    );
  }
  const closers: [string, () => Promise<void>][] = [["the NATS connection", () => nc.close()]];
  // Without NATS, a close may wait on a server that is gone: each gets a few seconds.
  const closeAll = async () => {
    for (const [what, close] of closers.reverse()) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve("it took too long"), CLOSE_STEP_MS);
      });
      const why = await Promise.race([
        close().then(() => "", (error) => errorText(error)),
        late,
      ]);
      clearTimeout(timer);
      if (why !== "") log("warn", `Cannot close ${what} cleanly: ${why}`);
    }
  };
  try {
    const publishTimeout = options.publishTimeoutMs ?? 5000;
    const js = jetstream(nc, { timeout: publishTimeout });
    const jsm = await jetstreamManager(nc, { timeout: 10_000 });
    await ensureStreams(jsm, settings);
    const store = options.clickhouseUrl === undefined
      ? undefined
      : await ClickHouseStore.open(options.clickhouseUrl);
    if (store !== undefined) closers.push(["the ClickHouse client", () => store.close()]);
    const publishRevocations = (sequence: number, revocations: readonly Revocation[]) => {
      const subject = partitionSubject("revocations", sequence % partitions, partitions);
      js.publish(subject, encodeRevocations({ revocations }), {
        msgID: `revocations:${sequence}:${name}`,
      }).catch((error) =>
        log("error", `Cannot publish revocations of entry ${sequence}: ${errorText(error)}`)
      );
    };
    const replica = await OwnershipReplica.start(js, jsm, {
      holdNs,
      mergeGapNs: seconds(options.mergeGapSeconds ?? 30),
      slackNs: seconds(options.slackSeconds ?? 1),
      retentionNs: seconds(settings.retentionSeconds),
      onRevocations: publishRevocations,
      log,
      now,
    });
    closers.push(["the ownership log reader", () => replica.close()]);
    const attributor = replica.attributor;
    const nodeStats = (): ClusterNodeStats => ({
      ...stats,
      ownershipApplied: replica.applied,
      mapRanges: attributor.ownership.size,
      mapAgeMs: replica.ageMs,
    });
    const lag = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const { stream, name } of consumerPlaces(partitions)) {
        const info = await jsm.consumers.info(stream, name);
        out[name] = (out[name] ?? 0) + info.num_pending + info.num_ack_pending;
      }
      return out;
    };

    /** A read of ClickHouse, answered with 503 when it fails: the client retries. */
    const readable = async <T>(read: Promise<T>): Promise<T> => {
      try {
        return await read;
      } catch (error) {
        throw new HttpError(
          503,
          `Cannot read flows: ${errorText(error)}; retry after ${RETRY_AFTER_SECONDS} s`,
          { "retry-after": String(RETRY_AFTER_SECONDS) },
        );
      }
    };

    /** A publish failed: the batch is refused with 503 and the agent retries it. */
    const unavailable = (id: string, error: unknown) =>
      new HttpError(
        503,
        `Cannot store batch ${id}: JetStream cannot take writes now (${
          errorText(error)
        }); retry after ${RETRY_AFTER_SECONDS} s`,
        { "retry-after": String(RETRY_AFTER_SECONDS) },
      );

    /** Publishes with JetStream's acknowledgement, or throws 503. */
    const publish = async (
      subject: string,
      data: Uint8Array,
      msgID: string,
      h?: ReturnType<typeof headers>,
    ) => {
      try {
        return await js.publish(subject, data, { msgID, headers: h, timeout: publishTimeout });
      } catch (error) {
        throw unavailable(msgID, error);
      }
    };

    /**
     * Publishes batch `hostname:sequence`'s ownership entry, with its digest, unless one is
     * there: returns the entry's stream sequence (the earlier one's for a retry); throws 409
     * when the entry there has another digest (a reused sequence), 503 when JetStream fails.
     */
    const claimBatch = async (
      hostname: string,
      sequence: number,
      digest: Uint8Array,
      heartbeats: Uint8Array,
    ): Promise<number> => {
      const id = `${hostname}:${sequence}`;
      const subject = ownershipSubject(hostname, sequence);
      const h = headers();
      h.set(HEADERS.digest, Buffer.from(digest).toString("hex"));
      try {
        const ack = await js.publish(subject, heartbeats, {
          headers: h,
          expect: { lastSubjectSequence: 0 },
          timeout: publishTimeout,
        });
        return ack.seq;
      } catch (error) {
        const there = error instanceof JetStreamApiError &&
          error.code === JetStreamApiCodes.StreamWrongLastSequence;
        if (!there) throw unavailable(id, error);
      }
      let stored: StoredMsg | null;
      try {
        stored = await jsm.streams.getMessage(STREAMS.ownership, { last_by_subj: subject });
      } catch (error) {
        throw unavailable(id, error);
      }
      // Gone since (past the retention): published again on the agent's next try.
      if (stored === null) throw unavailable(id, new Error(`entry ${subject} expired`));
      const storedDigest = Buffer.from(stored.header.get(HEADERS.digest), "hex");
      if (storedDigest.length !== digest.length || !timingSafeEqual(storedDigest, digest)) {
        throw new HttpError(409, batchConflict(hostname, sequence, storedDigest, digest).message);
      }
      return stored.seq;
    };

    const backend: CollectorBackend = {
      async ingest(batch, cbor): Promise<IngestResult> {
        const hostname = batch.header.host.hostname;
        const sequence = batch.header.sequence;
        const id = `${hostname}:${sequence}`;
        try {
          const digest = batchDigest(cbor);
          const heartbeats = encodeHeartbeats(attributor.heartbeats(hostname, batch.flows));
          const ownershipSeq = await claimBatch(hostname, sequence, digest, heartbeats);
          const h = headers();
          h.set(HEADERS.ownershipSeq, `${ownershipSeq}`);
          const entry = prepareBatch(batch, digest, now());
          const subject = subjectOf("batches", hostname);
          const ack = await publish(subject, encodeBatchEntry(entry), id, h);
          stats.batchesIn++;
          // A retry the digest names but JetStream took again (its window was over) is stored
          // again: the sink keeps one row per flow.
          const duplicate = ack.duplicate;
          if (duplicate) stats.batchesRepeated++;
          return batchTaken(batch, duplicate);
        } catch (error) {
          if (error instanceof HttpError && error.status === 503) stats.batchesRefused++;
          throw error;
        }
      },
      async flows(filter) {
        if (store === undefined) {
          throw new HttpError(
            404,
            "This node stores no flows: query ClickHouse (start nodes with --clickhouse-url)",
          );
        }
        return await readable(store.flows(filter));
      },
      graph: store === undefined ? undefined : cachedGraphSource({
        edgeStats: (range) => readable(store.edgeStats(range)),
        edgeFlows: (...edge) => readable(store.edgeFlows(...edge)),
      }, GRAPH_CACHE_MS),
      tick: () => replica.prune(),
      metrics: async () => renderMetrics(nodeStats(), await lag().catch(() => ({}))),
      close: () => {},
    };

    /** Attributes one batch of `FLOW_BATCHES`; see the module documentation. */
    const attributeBatch = async (m: JsMsg) => {
      const ownershipSeq = Number(m.headers?.get(HEADERS.ownershipSeq) || 0);
      if (!await replica.waitFor(ownershipSeq, STALL_MS)) {
        throw new Error(
          `the ownership map has entry ${replica.applied}, the batch needs ${ownershipSeq}`,
        );
      }
      const batch = decodeBatchEntry(m.data);
      const id = `${batch.hostname}:${batch.sequence}`;
      const count = batch.remoteKeys.length;
      const verdicts: Verdict[] = new Array(count);
      const indexes: number[] = new Array(count);
      const held: number[] = [];
      for (let i = 0; i < count; i++) {
        verdicts[i] = attributor.attribute(endpointOf(batch, i));
        indexes[i] = i;
        if (verdicts[i].status === "pending") held.push(i);
      }
      await js.publish(
        subjectOf("flows", batch.hostname),
        encodeAttributed({ batch, indexes, version: 0, verdicts }),
        { msgID: `${id}:0` },
      );
      if (held.length > 0) {
        const subject = subjectOf("held", batch.hostname);
        await js.publish(subject, encodeHeld({ batch, indexes: held }), { msgID: id });
      }
      await m.ackAck();
      stats.batchesAttributed++;
      stats.heldFlows += held.length;
    };

    /** Tries the held flows of one batch of `FLOW_HELD` again. */
    const settleHeld = async (m: JsMsg) => {
      const entry = decodeHeld(m.data);
      const { batch } = entry;
      const expired = now() >= batch.receivedNs + holdNs;
      const verdicts = entry.indexes.map((i) => attributor.attribute(endpointOf(batch, i)));
      if (!expired && verdicts.some((v) => v.status === "pending")) {
        m.nak(holdRetryMs);
        stats.heldRetried++;
        return;
      }
      await js.publish(
        subjectOf("flows", batch.hostname),
        encodeAttributed({
          ...entry,
          version: 1,
          verdicts: verdicts.map((v) => v.status === "pending" ? { status: "unattributed" } : v),
        }),
        { msgID: `${batch.hostname}:${batch.sequence}:1` },
      );
      await m.ackAck();
      stats.heldSettled++;
      stats.heldFlowsSettled += entry.indexes.length;
    };

    /**
     * Inserts a run of `FLOW_OUTPUT` entries into ClickHouse, then acknowledges them: each
     * flow's row as ingest wrote it with its verdict appended, and each batch's row once.
     */
    const sinkEntries = async (messages: JsMsg[]) => {
      // The pull's rows go in one insert (ClickHouse spends per insert), written in pieces: one
      // buffer of tens of megabytes cost the node twice as much per flow (docs/cluster.md).
      const pieces: Uint8Array[] = [];
      let piece = new RowBinaryWriter(SINK_PIECE_BYTES);
      const batchRows = new RowBinaryWriter();
      const revocations = [];
      let count = 0;
      for (const m of messages) {
        if (m.subject.startsWith(SUBJECTS.revocations)) {
          revocations.push(...decodeRevocations(m.data).revocations);
          continue;
        }
        const entry = decodeAttributed(m.data);
        const { batch } = entry;
        const rows = gunzipSync(batch.flowRows, { chunkSize: gzipChunkSize(batch.flowRows) });
        const offsets = batch.rowOffsets;
        entry.indexes.forEach((index, i) => {
          piece.raw(rows.subarray(offsets[index], offsets[index + 1]));
          writeVerdict(piece, entry.version, entry.verdicts[i]);
        });
        count += entry.indexes.length;
        if (entry.version === 0) batchRows.raw(batch.batchRow);
        if (piece.length >= SINK_PIECE_BYTES * 3 / 4) {
          pieces.push(piece.bytes());
          piece = new RowBinaryWriter(SINK_PIECE_BYTES);
        }
      }
      pieces.push(piece.bytes());
      await store!.insertFlowRows(pieces);
      await store!.insertBatchRows(batchRows.bytes());
      await store!.insertRevocations(revocations);
      for (const m of messages) m.ack();
      stats.sinkRows += count;
    };

    // Each loop fetches for at most a second, so it sees `stopping` soon after close().
    let stopping = false;
    const loops: Promise<void>[] = [];
    /** Runs `consumer` on every partition of its stream. */
    const runLoops = (
      consumer: keyof typeof CONSUMERS,
      handle: (messages: JsMsg[]) => Promise<void>,
      batchSize: number,
    ) => {
      for (const place of consumerPlaces(partitions)) {
        if (place.consumer === consumer) runLoop(place.name, place.stream, handle, batchSize);
      }
    };
    const runLoop = (
      consumerName: string,
      stream: string,
      handle: (messages: JsMsg[]) => Promise<void>,
      batchSize: number,
    ) => {
      loops.push((async () => {
        let consumer: Consumer | undefined;
        while (!stopping) {
          const messages: JsMsg[] = [];
          try {
            consumer ??= await js.consumers.get(stream, consumerName);
            const batch = await consumer.fetch({ max_messages: batchSize, expires: 1000 });
            for await (const m of batch) messages.push(m);
          } catch (error) {
            // A pull cut short (missed heartbeats while this node was busy, a server lost):
            // what did arrive is handled below, and the next pull starts afresh.
            consumer = undefined;
            if (!stopping) log("warn", `Consumer ${consumerName}: ${errorText(error)} (retrying)`);
          }
          if (stopping) {
            for (const m of messages) m.nak();
          } else if (messages.length > 0) {
            await handle(messages);
          } else if (consumer === undefined) {
            await new Promise((resolve) => setTimeout(resolve, 500));
          }
        }
      })());
    };
    /**
     * Handles a pull's entries concurrently (their CPU work runs one after the other, their
     * publishes overlap); one that fails is redelivered after a pause.
     */
    const each = (handle: (m: JsMsg) => Promise<void>, what: string) => async (ms: JsMsg[]) => {
      await Promise.all(ms.map(async (m) => {
        try {
          await handle(m);
        } catch (error) {
          // An entry of a newer version (or unreadable) waits for a node that reads it; any
          // other failure is tried again soon.
          if (error instanceof EntryError) {
            log(
              "warn",
              `Cannot ${what} entry ${m.seq}: ${errorText(error)} (left for another node)`,
            );
            m.nak(NEWER_ENTRY_DELAY_MS);
          } else {
            log("warn", `Cannot ${what} entry ${m.seq}: ${errorText(error)} (redelivered)`);
            m.nak(1000);
          }
        }
      }));
    };

    replica.caughtUp.then(() => {
      if (stopping) return;
      stats.caughtUp = true;
      log("info", `Node ${name} has read the ownership log (${replica.applied} entries)`);
      if (options.work?.attribution === false) return;
      runLoops("attribution", each(attributeBatch, "attribute"), 64);
      runLoops("hold", each(settleHeld, "settle"), 64);
    });
    if (store !== undefined && options.work?.sink !== false) {
      // One insert at a time for all partitions' loops: what they fetch while an insert runs
      // goes into the next one together, so partitions do not make the inserts smaller.
      let waiting: { messages: JsMsg[]; stored: PromiseWithResolvers<void> }[] = [];
      let inserting = false;
      const insertTogether = async (messages: JsMsg[]) => {
        const stored = Promise.withResolvers<void>();
        waiting.push({ messages, stored });
        if (!inserting) {
          inserting = true;
          while (waiting.length > 0) {
            const group = waiting;
            waiting = [];
            try {
              await sinkEntries(group.flatMap((g) => g.messages));
              for (const g of group) g.stored.resolve();
            } catch (error) {
              for (const g of group) g.stored.reject(error);
            }
          }
          inserting = false;
        }
        await stored.promise;
      };
      runLoops("sink", async (ms) => {
        try {
          await insertTogether(ms);
        } catch (error) {
          stats.sinkErrors++;
          log("warn", `Cannot store ${ms.length} entries: ${errorText(error)} (redelivered)`);
          for (const m of ms) m.nak(2000);
        }
      }, SINK_BATCH);
    }
    closers.push(["the consumers", async () => {
      stopping = true;
      await Promise.allSettled(loops);
    }]);

    let server: CollectorServer;
    try {
      server = await serveCollector(options, backend);
    } catch (error) {
      await closeAll();
      throw error;
    }
    let closing: Promise<void> | undefined;
    const close = () =>
      closing ??= (async () => {
        await server.close();
        await closeAll();
      })();
    return {
      url: server.url,
      name,
      replica,
      store,
      stats: nodeStats,
      lag,
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}

/**
 * A validated batch as `FLOW_BATCHES` carries it: its rows for ClickHouse and the remote ends
 * attribution looks up, so that no later stage decodes the batch again.
 */
export function prepareBatch(
  batch: DecodedBatch,
  digest: Uint8Array,
  receivedNs: bigint,
): BatchEntry {
  const { header } = batch;
  // Interim records of open connections are heartbeats only (learned at ingest): the cluster
  // stores each flow once, at its close, attributed by its start like any other.
  const flows = batch.flows.some((f) => f.recordKind === "interim")
    ? batch.flows.filter((f) => f.recordKind === "final")
    : batch.flows;
  const hostname = header.host.hostname;
  const rows = new RowBinaryWriter(flows.length * 320 + 64);
  const rowOffsets = new Uint32Array(flows.length + 1);
  const remoteKeys: string[] = new Array(flows.length);
  for (let i = 0; i < flows.length; i++) {
    const f = flows[i];
    rowOffsets[i] = rows.length;
    const remoteIp = formatIp(f.remoteIp);
    remoteKeys[i] = ipKeyOfText(hostname, f.remoteIp, remoteIp);
    writeFlowRow(rows, hostname, header.sequence, i, f, remoteKeys[i], remoteIp, receivedNs);
  }
  rowOffsets[flows.length] = rows.length;
  const batchRow = new RowBinaryWriter(256);
  writeBatchRow(batchRow, header, receivedNs, digest);
  return {
    hostname,
    sequence: header.sequence,
    receivedNs,
    batchRow: batchRow.bytes(),
    flowRows: gzipSync(rows.bytes(), { level: ROWS_GZIP_LEVEL }),
    rowOffsets,
    remoteKeys,
    endpoints: packEndpoints(flows),
  };
}

function seconds(s: number): bigint {
  return BigInt(Math.round(s * 1e9));
}

/** A node's figures in the Prometheus text format (`GET /metrics`). */
function renderMetrics(stats: ClusterNodeStats, lag: Record<string, number>): string {
  const registry = new MetricsRegistry();
  const prefix = "flowexporter_cluster_";
  const counters: [keyof ClusterNodeStats, string, string][] = [
    ["batchesIn", "batches_in_total", "Batches acknowledged to agents, repeats included."],
    ["batchesRepeated", "batches_repeated_total", "Batches JetStream already had."],
    ["batchesRefused", "batches_refused_total", "Batches refused with 503: JetStream unavailable."],
    ["batchesAttributed", "batches_attributed_total", "Batches this node attributed."],
    ["heldSettled", "held_settled_total", "Held batches this node settled."],
    ["heldRetried", "held_retried_total", "Held batches this node put back to wait."],
    ["heldFlows", "held_flows_total", "Flows this node put on hold."],
    ["heldFlowsSettled", "held_flows_settled_total", "Held flows this node gave a verdict."],
    ["sinkRows", "sink_rows_total", "Flows this node inserted into ClickHouse."],
    ["sinkErrors", "sink_errors_total", "Failed ClickHouse inserts (redelivered)."],
  ];
  for (const [key, name, help] of counters) {
    registry.counter(prefix + name, help).add(Number(stats[key]));
  }
  registry.gauge(prefix + "ownership_applied", "Last ownership log entry applied.")
    .set(stats.ownershipApplied);
  registry.gauge(prefix + "map_ranges", "Ranges in the ownership map.").set(stats.mapRanges);
  registry.gauge(prefix + "map_age_seconds", "Seconds since the last ownership entry applied.")
    .set(Number.isFinite(stats.mapAgeMs) ? stats.mapAgeMs / 1000 : -1);
  registry.gauge(prefix + "caught_up", "1 once the node has read the ownership log.")
    .set(stats.caughtUp ? 1 : 0);
  const consumerLag = registry.gauge(
    prefix + "consumer_lag",
    "Entries not yet handled by a shared consumer (attribution: batches; hold: held batches; clickhouse: sink).",
    ["consumer"],
  );
  for (const [consumer, n] of Object.entries(lag)) consumerLag.labels(consumer).set(n);
  return registry.render();
}
