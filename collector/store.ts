/**
 * The collector's database: an embedded SQLite file (`node:sqlite`, WAL mode) holding batches,
 * flows with their remote attribution, the learned ownership ranges and the revocations of
 * earlier attributions. One writer (the collector process); readers open it read-only.
 *
 * Tables (see `docs/collector.md` for every column):
 * - `batches`: one row per accepted batch, unique per (hostname, sequence), with the SHA-256 of
 *   its body (to tell a retry from other content under a used sequence number);
 * - `flows`: one row per flow: every `FlowRecord` field, the batch, and the remote attribution
 *   as decided at ingest (`attribution`, `remote_workload_id`, `owner_key`); unique per flow ID
 *   (a flow sent again in another batch is stored once). A flow still open (its latest record
 *   `interim`) has its counters, `t_end_ns` and end moved on by each later record; its
 *   attribution stays the one its first record got (a flow's start does not move);
 * - `flow_samples`: the cumulative byte and segment counters of each record of a flow that had
 *   interim records, by record time; `flow_window_deltas` (view) turns them into what each
 *   window added, and gives a flow without samples all its bytes at its end;
 * - `settlements`: the final verdict of flows stored `pending` (append-only, cheaper than
 *   updating `flows` rows in place);
 * - `revocations`: stretches in which later heartbeats showed that attributions through one
 *   ownership key, or to one address, can no longer be trusted;
 * - `flows_attributed` (view): `flows` with settlements and revocations applied; always read
 *   attributions through it;
 * - `ownership`, `ownership_reach`, `shared_addresses`: the attributor's state (ranges, how far
 *   each key's forgotten ranges reached, shared addresses), replayed after a restart.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import type { BatchHeader } from "../lib/wire.ts";
import type { Direction, FlowEnd, FlowRecord, IdentitySource, RecordKind } from "../lib/flow.ts";
import { decodeFlowId, encodeFlowId, hasFlowId, NO_BOOT_ID } from "../lib/flow_id.ts";
import { formatIp, parseIp } from "../lib/map_layout.ts";
import type { AttributionStatus, Resolution, Revocation, Verdict } from "./attributor.ts";
import type { OwnershipRange } from "./ownership.ts";
import { errorText } from "../lib/error_text.ts";

/**
 * Steps from each older layout version to the next, run before `SCHEMA` (which then adds the
 * new indexes and views): `UPGRADES[v - 1]` takes version v to v + 1.
 */
const UPGRADES = [
  // 2: flow IDs and retransmitted bytes (wire schema 3), NULL in the rows before. The views
  // list the flow columns, so they are made again.
  "ALTER TABLE flows ADD COLUMN flow_id BLOB; ALTER TABLE flows ADD COLUMN bytes_retrans INTEGER; " +
  "DROP VIEW IF EXISTS flows_attributed; DROP VIEW IF EXISTS flows_settled;",
  // 3: the SHA-256 of each batch's body, to tell a retry from other content under a used
  // (hostname, sequence); NULL in the rows before, which are taken as retries.
  "ALTER TABLE batches ADD COLUMN digest BLOB;",
  // 4: interim records (wire schema 4): each flow's latest record kind, `final` for the rows
  // before; `flow_samples` and its view come with SCHEMA.
  "ALTER TABLE flows ADD COLUMN record_kind TEXT NOT NULL DEFAULT 'final'; " +
  "DROP VIEW IF EXISTS flows_attributed; DROP VIEW IF EXISTS flows_settled;",
];

/**
 * Version of the database layout (`PRAGMA user_version`). A file of an older version is
 * upgraded when opened for writing; one of a newer version is refused.
 */
export const STORE_VERSION: number = UPGRADES.length + 1;

/** Cannot open or use the database; the message names the file and what to do. */
export class StoreError extends Error {
  /** Creates the error; `message` is one sentence-case line. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreError";
  }
}

/**
 * A flow as stored, with its attribution as the `flows_attributed` view reports it: its latest
 * record's counters and times, and `recordKind` `interim` while it is open.
 */
export interface StoredFlow extends FlowRecord {
  readonly id: number;
  /** Name of the host that reported the flow. */
  readonly hostname: string;
  /** Sequence number of the batch that carried it. */
  readonly batchSequence: number;
  /** Remote workload when `attribution` is `attributed`, else null. */
  readonly remoteWorkloadId: string | null;
  readonly attribution: AttributionStatus;
  /** When the collector received the flow, ns since the epoch. */
  readonly receivedNs: bigint;
}

/** Filters of {@linkcode FlowStore.flows}; all optional, combined with AND. */
export interface FlowFilter {
  /** Flows that started at or after this time (ns since the epoch). */
  fromNs?: bigint;
  /** Flows that started before this time (ns since the epoch). */
  toNs?: bigint;
  /** Local or remote workload equals this. */
  workload?: string;
  /** Local or remote address equals this (canonical text, as `formatIp` writes it). */
  ip?: string;
  /** Reporting host's name. */
  hostname?: string;
  /** Attribution status. */
  attribution?: AttributionStatus;
  /** Flows whose latest record is of this kind: `interim` for the ones still open. */
  recordKind?: RecordKind;
  /** Most rows returned. Default 1000. */
  limit?: number;
}

/** A held flow as persisted, to replay into the attributor after a restart. */
export interface PendingFlow {
  readonly id: number;
  readonly remoteKey: string;
  readonly remotePort: number;
  readonly direction: Direction;
  readonly tStartNs: bigint;
  readonly receivedNs: bigint;
}

/** What each window added to one flow ({@linkcode FlowStore.windowDeltas}). */
export interface WindowDelta {
  /** The flow (its latest record). */
  readonly flow: StoredFlow;
  /** Time of the record that closed the window: the snapshot, or the close. */
  readonly tNs: bigint;
  /** Kind of that record: `final` for the window the flow closed in. */
  readonly recordKind: RecordKind;
  readonly bytesSent: number;
  readonly bytesRetrans: number;
  readonly bytesAcked: number;
  readonly bytesReceived: number;
  readonly segsOut: number;
  readonly segsIn: number;
}

/** What {@linkcode FlowStore.writeBatch} did with each flow of the batch. */
export interface BatchWritten {
  /**
   * Per flow: its new row id, or 0 when it added no flow: its flow ID was stored already (a
   * repeat, a later record of an open flow, or an older one).
   */
  readonly ids: number[];
  /** Records that moved an open flow on (a later interim record, or its final one). */
  readonly updated: number;
}

/** A flow's latest stored record, as {@linkcode FlowStore.latestRecord} reads it. */
export interface LatestRecord {
  readonly recordKind: RecordKind;
  readonly tEndNs: bigint;
  readonly bytesSent: number;
  readonly bytesRetrans: number;
  readonly bytesAcked: number;
  readonly bytesReceived: number;
}

/** Everything one accepted batch writes, in one transaction. */
export interface BatchWrite {
  readonly header: BatchHeader;
  /** SHA-256 of the batch body (uncompressed CBOR), if known. */
  readonly digest?: Uint8Array;
  readonly flows: readonly FlowRecord[];
  /** Per flow: the address key of its remote end. */
  readonly remoteKeys: readonly string[];
  /** Per flow: its verdict at ingest. */
  readonly verdicts: readonly Verdict[];
  readonly receivedNs: bigint;
  /** Held flows (of earlier batches) settled by this batch. */
  readonly resolutions: readonly Resolution[];
  readonly revocations: readonly Revocation[];
  /** Ranges to persist: for each key and workload, the full current list. */
  readonly ranges: ReadonlyMap<string, ReadonlyMap<string, readonly OwnershipRange[]>>;
  /** How far the forgotten ranges of each key in `ranges` reached (`OwnershipMap.reach`). */
  readonly reach: ReadonlyMap<string, bigint>;
  /** Shared addresses to persist, with the latest end of their port-map heartbeats. */
  readonly shared: ReadonlyMap<string, bigint>;
}

/** Options of {@linkcode FlowStore.open}. */
export interface StoreOptions {
  /** Open for reading only (queries); the file must exist. */
  readOnly?: boolean;
}

const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

const FLOW_COLUMNS = [
  "id",
  "batch_id",
  "hostname",
  "flow_id",
  "record_kind",
  "t_start_ns",
  "t_end_ns",
  "family",
  "local_ip",
  "local_port",
  "remote_ip",
  "remote_port",
  "local_workload_id",
  "identity_source",
  "seeded",
  "direction",
  "close_state",
  "flow_end",
  "error",
  "bytes_sent",
  "bytes_retrans",
  "bytes_acked",
  "bytes_received",
  "segs_out",
  "segs_in",
  "total_retrans",
  "srtt_us",
  "min_rtt_us",
  "delivered",
  "lost",
  "remote_key",
  "attribution",
  "remote_workload_id",
  "owner_key",
  "received_ns",
];

/** The columns of `flows` from `first` to `last`, both included. */
function flowColumns(first: string, last: string): string[] {
  return FLOW_COLUMNS.slice(FLOW_COLUMNS.indexOf(first), FLOW_COLUMNS.indexOf(last) + 1);
}

/**
 * The columns a flow's later records move on (the rest, its identity, start and attribution,
 * stay its first record's).
 */
const LATEST_COLUMNS = ["record_kind", "t_end_ns", ...flowColumns("close_state", "lost")];

/** Where each of {@linkcode LATEST_COLUMNS} is in a row's values (`FLOW_COLUMNS` order). */
const LATEST_INDEXES = LATEST_COLUMNS.map((c) => FLOW_COLUMNS.indexOf(c));

/** The counters a flow's records sample, cumulative since its start. */
const SAMPLE_COUNTERS = flowColumns("bytes_sent", "segs_in");

/** The columns a settlement or revocation never changes. */
const PLAIN_COLUMNS = FLOW_COLUMNS.filter((c) =>
  c !== "attribution" && c !== "remote_workload_id" && c !== "owner_key"
);

const SCHEMA = `
CREATE TABLE IF NOT EXISTS batches (
  id INTEGER PRIMARY KEY,
  hostname TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  host_workload_id TEXT NOT NULL,
  instance_id TEXT,
  exporter_version TEXT NOT NULL,
  window_start_ns INTEGER NOT NULL,
  window_end_ns INTEGER NOT NULL,
  record_count INTEGER NOT NULL,
  clock_offset_ns INTEGER NOT NULL,
  kernel_drops INTEGER NOT NULL,
  recursion_misses INTEGER NOT NULL,
  spool_evictions INTEGER NOT NULL,
  received_ns INTEGER NOT NULL,
  digest BLOB,
  UNIQUE (hostname, sequence)
);
CREATE TABLE IF NOT EXISTS flows (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL REFERENCES batches (id),
  hostname TEXT NOT NULL,
  flow_id BLOB,
  record_kind TEXT NOT NULL,
  t_start_ns INTEGER NOT NULL,
  t_end_ns INTEGER NOT NULL,
  family INTEGER NOT NULL,
  local_ip TEXT NOT NULL,
  local_port INTEGER NOT NULL,
  remote_ip TEXT NOT NULL,
  remote_port INTEGER NOT NULL,
  local_workload_id TEXT NOT NULL,
  identity_source TEXT NOT NULL,
  seeded INTEGER NOT NULL,
  direction TEXT NOT NULL,
  close_state TEXT NOT NULL,
  flow_end TEXT NOT NULL,
  error INTEGER NOT NULL,
  bytes_sent INTEGER NOT NULL,
  bytes_retrans INTEGER,
  bytes_acked INTEGER NOT NULL,
  bytes_received INTEGER NOT NULL,
  segs_out INTEGER NOT NULL,
  segs_in INTEGER NOT NULL,
  total_retrans INTEGER NOT NULL,
  srtt_us INTEGER NOT NULL,
  min_rtt_us INTEGER NOT NULL,
  delivered INTEGER NOT NULL,
  lost INTEGER NOT NULL,
  remote_key TEXT NOT NULL,
  attribution TEXT NOT NULL,
  remote_workload_id TEXT,
  owner_key TEXT,
  received_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_by_start ON flows (t_start_ns);
CREATE INDEX IF NOT EXISTS flows_pending ON flows (id) WHERE attribution = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS flows_by_flow_id ON flows (flow_id) WHERE flow_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS flow_samples (
  flow INTEGER NOT NULL REFERENCES flows (id),
  t_ns INTEGER NOT NULL,
  record_kind TEXT NOT NULL,
  ${SAMPLE_COUNTERS.map((c) => `${c} INTEGER NOT NULL`).join(",\n  ")},
  PRIMARY KEY (flow, t_ns)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS flow_window_deltas AS
SELECT flow AS id, t_ns, record_kind,
  ${SAMPLE_COUNTERS.map((c) => `${c} - coalesce(lag(${c}) OVER w, 0) AS ${c}`).join(",\n  ")}
FROM flow_samples WINDOW w AS (PARTITION BY flow ORDER BY t_ns)
UNION ALL
SELECT id, t_end_ns, record_kind, ${SAMPLE_COUNTERS.map((c) => `coalesce(${c}, 0)`).join(", ")}
FROM flows AS f WHERE NOT EXISTS (SELECT 1 FROM flow_samples WHERE flow = f.id);
CREATE TABLE IF NOT EXISTS settlements (
  flow_id INTEGER PRIMARY KEY,
  attribution TEXT NOT NULL,
  remote_workload_id TEXT,
  owner_key TEXT
);
CREATE TABLE IF NOT EXISTS revocations (
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL,
  by_address INTEGER NOT NULL,
  from_ns INTEGER NOT NULL,
  to_ns INTEGER NOT NULL,
  server_ends_only INTEGER NOT NULL,
  status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_key ON revocations (key, by_address, from_ns);
CREATE TABLE IF NOT EXISTS ownership (
  key TEXT NOT NULL,
  workload TEXT NOT NULL,
  start_ns INTEGER NOT NULL,
  end_ns INTEGER NOT NULL,
  PRIMARY KEY (key, workload, start_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ownership_reach (
  key TEXT PRIMARY KEY,
  forgotten_until_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared_addresses (
  ip_key TEXT PRIMARY KEY,
  end_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS flows_settled AS
SELECT ${PLAIN_COLUMNS.map((c) => `f.${c}`).join(", ")},
  coalesce(s.attribution, f.attribution) AS attribution,
  CASE WHEN s.flow_id IS NULL THEN f.remote_workload_id ELSE s.remote_workload_id END
    AS remote_workload_id,
  CASE WHEN s.flow_id IS NULL THEN f.owner_key ELSE s.owner_key END AS owner_key
FROM flows AS f LEFT JOIN settlements AS s ON s.flow_id = f.id;
CREATE VIEW IF NOT EXISTS flows_attributed AS
SELECT ${PLAIN_COLUMNS.map((c) => `f.${c}`).join(", ")},
  coalesce(r.status, f.attribution) AS attribution,
  CASE WHEN r.id IS NULL THEN f.remote_workload_id END AS remote_workload_id,
  CASE WHEN r.id IS NULL THEN f.owner_key END AS owner_key
FROM flows_settled AS f
LEFT JOIN revocations AS r ON f.owner_key IS NOT NULL AND r.id = coalesce(
  (SELECT id FROM revocations
    WHERE key = f.owner_key AND by_address = 0 AND from_ns <= f.t_start_ns
      AND to_ns >= f.t_start_ns AND (server_ends_only = 0 OR f.direction <> 'inbound')
    LIMIT 1),
  (SELECT id FROM revocations
    WHERE key = f.remote_key AND by_address = 1 AND from_ns <= f.t_start_ns
      AND to_ns >= f.t_start_ns AND (server_ends_only = 0 OR f.direction <> 'inbound')
    LIMIT 1)
);
`;

interface LastRevocation {
  id: number;
  from: bigint;
  to: bigint;
}

/** The collector's SQLite database; see the module documentation. */
export class FlowStore {
  readonly #db: DatabaseSync;
  readonly #path: string;
  readonly #readOnly: boolean;
  #nextFlowId = 1;
  #closed = false;
  #stmts?: ReturnType<typeof prepareWriters>;
  /** Latest revocation row per owner key and kind, extended instead of duplicated. */
  readonly #lastRevocation = new Map<string, LastRevocation>();

  private constructor(db: DatabaseSync, path: string, readOnly: boolean) {
    this.#db = db;
    this.#path = path;
    this.#readOnly = readOnly;
  }

  /**
   * Opens (and, for writing, creates and migrates) the database at `path`.
   *
   * @throws {StoreError} when the file cannot be opened or has another layout version.
   */
  static open(path: string, options: StoreOptions = {}): FlowStore {
    const readOnly = options.readOnly ?? false;
    if (readOnly) {
      try {
        Deno.statSync(path);
      } catch (cause) {
        throw new StoreError(
          `Cannot open database ${path}: ${describeError(cause)} (check --db)`,
          { cause },
        );
      }
    }
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path, { readOnly });
    } catch (cause) {
      throw new StoreError(`Cannot open database ${path}: ${describeError(cause)}`, { cause });
    }
    const store = new FlowStore(db, path, readOnly);
    try {
      store.#init();
    } catch (cause) {
      db.close();
      if (cause instanceof StoreError) throw cause;
      throw new StoreError(`Cannot open database ${path}: ${describeError(cause)}`, { cause });
    }
    return store;
  }

  /** Path the database was opened from. */
  get path(): string {
    return this.#path;
  }

  /** True when a batch with this host and sequence is already stored. */
  hasBatch(hostname: string, sequence: number): boolean {
    return this.batchDigest(hostname, sequence) !== undefined;
  }

  /**
   * The digest stored with the batch of this host and sequence: undefined when there is no such
   * batch, null when it was stored without one (before layout version 3).
   */
  batchDigest(hostname: string, sequence: number): Uint8Array | null | undefined {
    const row = this.#writers().hasBatch.get(hostname, sequence);
    return row === undefined ? undefined : (row.digest as Uint8Array | null);
  }

  /**
   * The latest stored record of the flow with this flow ID (`encodeFlowId`), if any: what a
   * later record's counters may not fall below.
   */
  latestRecord(flowId: Uint8Array): LatestRecord | undefined {
    const row = this.#writers().latestRecord.get(flowId);
    if (row === undefined) return undefined;
    return {
      recordKind: row.record_kind as RecordKind,
      tEndNs: row.t_end_ns as bigint,
      bytesSent: Number(row.bytes_sent),
      bytesRetrans: Number(row.bytes_retrans ?? 0),
      bytesAcked: Number(row.bytes_acked),
      bytesReceived: Number(row.bytes_received),
    };
  }

  /**
   * Writes one accepted batch, its flows and the attribution updates it caused, in one
   * transaction. A record whose flow ID is stored already adds no flow: it moves an open flow
   * on when it is later than the stored record (or the final one), and is kept as a sample when
   * its flow had interim records; else it is a repeat.
   */
  writeBatch(w: BatchWrite): BatchWritten {
    const s = this.#writers();
    const ids: number[] = new Array(w.flows.length);
    let updated = 0;
    this.#transaction(() => {
      const h = w.header;
      const batchId = Number(
        s.insertBatch.run(
          h.host.hostname,
          h.sequence,
          h.host.workloadId,
          h.host.instanceId ?? null,
          h.exporterVersion,
          i64(h.windowStartNs),
          i64(h.windowEndNs),
          h.recordCount,
          i64(h.clockOffsetNs),
          i64(h.loss.kernelDrops),
          i64(h.loss.recursionMisses),
          h.loss.spoolEvictions,
          w.receivedNs,
          w.digest ?? null,
        ).lastInsertRowid,
      );
      const hostname = h.host.hostname;
      const insert = s.insertFlow;
      let id = this.#nextFlowId;
      for (let i = 0; i < w.flows.length; i++) {
        const f = w.flows[i];
        const v = w.verdicts[i];
        const known = hasFlowId(f);
        const flowId = known ? encodeFlowId(f.bootId, f.cookie) : null;
        const values = [
          id,
          batchId,
          hostname,
          flowId,
          f.recordKind,
          i64(f.tStartNs),
          i64(f.tEndNs),
          f.family,
          formatIp(f.localIp),
          f.localPort,
          formatIp(f.remoteIp),
          f.remotePort,
          f.localWorkloadId,
          f.identitySource,
          f.seeded ? 1 : 0,
          f.direction,
          f.closeState,
          f.end,
          f.error,
          f.bytesSent,
          known ? f.bytesRetrans : null,
          f.bytesAcked,
          f.bytesReceived,
          f.segsOut,
          f.segsIn,
          f.totalRetrans,
          f.srttUs,
          f.minRttUs,
          f.delivered,
          f.lost,
          w.remoteKeys[i],
          v.status,
          v.workload ?? null,
          v.ownerKey ?? null,
          w.receivedNs,
        ];
        let stored = 0;
        if (Number(insert.run(...values).changes) !== 0) {
          stored = id;
          ids[i] = id++;
        } else {
          // Its flow ID is stored: a later record of an open flow moves it on; a repeat, or a
          // record older than the stored one, changes nothing.
          ids[i] = 0;
          const row = flowId === null ? undefined : s.moveOn.get(
            ...LATEST_INDEXES.map((k) => values[k]),
            flowId,
            f.recordKind,
            i64(f.tEndNs),
          );
          if (row !== undefined) {
            stored = Number(row.id);
            updated++;
          }
        }
        if (stored !== 0 && (f.recordKind === "interim" || ids[i] === 0)) {
          s.insertSample.run(
            stored,
            i64(f.tEndNs),
            f.recordKind,
            f.bytesSent,
            f.bytesRetrans,
            f.bytesAcked,
            f.bytesReceived,
            f.segsOut,
            f.segsIn,
          );
        }
      }
      this.#nextFlowId = id;
      this.#resolve(w.resolutions);
      this.#revoke(w.revocations);
      for (const [key, workloads] of w.ranges) {
        for (const [workload, ranges] of workloads) {
          s.deleteRanges.run(key, workload);
          for (const r of ranges) s.insertRange.run(key, workload, i64(r.startNs), i64(r.endNs));
        }
      }
      for (const [key, untilNs] of w.reach) s.upsertReach.run(key, signed64(untilNs));
      for (const [ipKey, endNs] of w.shared) s.upsertShared.run(ipKey, i64(endNs));
    });
    return { ids, updated };
  }

  /** Records the final verdicts of held flows (expired or settled outside a batch). */
  resolve(resolutions: readonly Resolution[]): void {
    if (resolutions.length === 0) return;
    this.#transaction(() => this.#resolve(resolutions));
  }

  /**
   * Deletes persisted ranges that no lookup at or after `horizonNs` reaches (widened by
   * `slackNs`, as `OwnershipMap.prune` does), noting how far they reached per key, and shared
   * marks that ended before `horizonNs`.
   */
  pruneOwnership(horizonNs: bigint, slackNs: bigint): void {
    const s = this.#writers();
    this.#transaction(() => {
      s.reachOfPruned.run(i64(slackNs), i64(slackNs), i64(horizonNs));
      s.pruneRanges.run(i64(slackNs), i64(horizonNs));
      s.pruneReach.run();
      s.pruneShared.run(i64(horizonNs));
    });
  }

  /** The persisted ownership ranges. */
  loadRanges(): OwnershipRange[] {
    const rows = this.#select(
      "SELECT key, workload, start_ns, end_ns FROM ownership ORDER BY key, workload, start_ns",
    );
    return rows.map((r) => ({
      key: r.key as string,
      workload: r.workload as string,
      startNs: r.start_ns as bigint,
      endNs: r.end_ns as bigint,
    }));
  }

  /** How far the forgotten ranges of each persisted key reached (`OwnershipMap.reach`). */
  loadReach(): Map<string, bigint> {
    const rows = this.#select("SELECT key, forgotten_until_ns FROM ownership_reach");
    return new Map(rows.map((r) => [r.key as string, r.forgotten_until_ns as bigint]));
  }

  /** The persisted shared addresses, with the latest end of their port-map heartbeats. */
  loadShared(): Map<string, bigint> {
    const rows = this.#select("SELECT ip_key, end_ns FROM shared_addresses");
    return new Map(rows.map((r) => [r.ip_key as string, r.end_ns as bigint]));
  }

  /** The flows still pending, oldest first, to hold again after a restart. */
  loadPending(): PendingFlow[] {
    const rows = this.#select(
      "SELECT id, remote_key, remote_port, direction, t_start_ns, received_ns FROM flows " +
        "WHERE attribution = 'pending' AND id NOT IN (SELECT flow_id FROM settlements) ORDER BY id",
    );
    return rows.map((r) => ({
      id: Number(r.id),
      remoteKey: r.remote_key as string,
      remotePort: Number(r.remote_port),
      direction: r.direction as Direction,
      tStartNs: r.t_start_ns as bigint,
      receivedNs: r.received_ns as bigint,
    }));
  }

  /** Flows matching `filter`, by start time then id, with revocations applied. */
  flows(filter: FlowFilter = {}): StoredFlow[] {
    const { where, params } = flowConditions(filter, "t_start_ns");
    params.push(filter.limit ?? 1000);
    const sql = `SELECT f.*, b.sequence AS batch_sequence FROM flows_attributed AS f ` +
      `JOIN batches AS b ON b.id = f.batch_id ` +
      (where.length > 0 ? `WHERE ${where.join(" AND ")} ` : "") +
      `ORDER BY t_start_ns, f.id LIMIT ?`;
    return toStoredFlows(this.#select(sql, params));
  }

  /**
   * What each batch window added to the flows matching `filter`, oldest first: one entry per
   * record of a flow that had interim records (the counters it added since the one before), and
   * one per other flow (all of its counters, at its close). The time range of `filter` applies
   * to the record's time, not to the flow's start.
   */
  windowDeltas(filter: FlowFilter = {}): WindowDelta[] {
    const { where, params } = flowConditions(filter, "d.t_ns");
    params.push(filter.limit ?? 1000);
    const sql = `SELECT f.*, b.sequence AS batch_sequence, d.t_ns AS delta_t_ns, ` +
      `d.record_kind AS delta_record_kind, ${
        SAMPLE_COUNTERS.map((c) => `d.${c} AS delta_${c}`).join(", ")
      } FROM flow_window_deltas AS d JOIN flows_attributed AS f ON f.id = d.id ` +
      `JOIN batches AS b ON b.id = f.batch_id ` +
      (where.length > 0 ? `WHERE ${where.join(" AND ")} ` : "") +
      `ORDER BY d.t_ns, d.id LIMIT ?`;
    let bootId = NO_BOOT_ID;
    return this.#select(sql, params).map((r) => {
      const flow = toStoredFlow(r, bootId);
      bootId = flow.bootId;
      return {
        flow,
        tNs: r.delta_t_ns as bigint,
        recordKind: r.delta_record_kind as RecordKind,
        bytesSent: Number(r.delta_bytes_sent),
        bytesRetrans: Number(r.delta_bytes_retrans),
        bytesAcked: Number(r.delta_bytes_acked),
        bytesReceived: Number(r.delta_bytes_received),
        segsOut: Number(r.delta_segs_out),
        segsIn: Number(r.delta_segs_in),
      };
    });
  }

  /** Row counts, for logs and tests. */
  /** Row counts, for logs and tests. */
  counts(): { batches: number; flows: number; pending: number; revocations: number } {
    const one = (sql: string) => Number(this.#select(sql)[0].n);
    return {
      batches: one("SELECT count(*) AS n FROM batches"),
      flows: one("SELECT count(*) AS n FROM flows"),
      pending: one("SELECT count(*) AS n FROM flows_settled WHERE attribution = 'pending'"),
      revocations: one("SELECT count(*) AS n FROM revocations"),
    };
  }

  /** Closes the database; safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#db.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #init(): void {
    const db = this.#db;
    const version = Number(db.prepare("PRAGMA user_version").get()?.user_version ?? 0);
    if (this.#readOnly) {
      if (version !== STORE_VERSION) throw this.#versionError(version);
      return;
    }
    // A 64 MiB page cache and fewer, larger checkpoints: together they double the insert rate.
    db.exec(
      "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; " +
        "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 16384",
    );
    if (version < 0 || version > STORE_VERSION) throw this.#versionError(version);
    const upgrades = version === 0 ? [] : UPGRADES.slice(version - 1);
    db.exec(
      `BEGIN; ${upgrades.join(" ")} ${SCHEMA} PRAGMA user_version = ${STORE_VERSION}; COMMIT;`,
    );
    const max = db.prepare("SELECT max(id) AS n FROM flows").get()?.n;
    this.#nextFlowId = Number(max ?? 0) + 1;
  }

  #versionError(version: number): StoreError {
    if (version === 0) {
      return new StoreError(
        `Cannot read database ${this.#path}: it is not a flowexporter collector database (check --db)`,
      );
    }
    const hint = version < STORE_VERSION
      ? "start the collector on it once to upgrade it"
      : "use a new --db file";
    return new StoreError(
      `Cannot open database ${this.#path}: layout version ${version}, this collector uses ${STORE_VERSION} (${hint})`,
    );
  }

  #writers(): ReturnType<typeof prepareWriters> {
    if (this.#closed) throw new StoreError(`Cannot use database ${this.#path}: it is closed`);
    if (this.#readOnly) {
      throw new StoreError(`Cannot write database ${this.#path}: it was opened read-only`);
    }
    return this.#stmts ??= prepareWriters(this.#db);
  }

  #select(sql: string, params: (string | bigint | number)[] = []): Record<string, unknown>[] {
    if (this.#closed) throw new StoreError(`Cannot use database ${this.#path}: it is closed`);
    const stmt = this.#db.prepare(sql);
    stmt.setReadBigInts(true);
    return stmt.all(...params) as Record<string, unknown>[];
  }

  #transaction(body: () => void): void {
    this.#db.exec("BEGIN");
    const nextFlowId = this.#nextFlowId;
    try {
      body();
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      this.#nextFlowId = nextFlowId;
      this.#lastRevocation.clear();
      throw error;
    }
  }

  #resolve(resolutions: readonly Resolution[]): void {
    const update = this.#writers().resolveFlow;
    for (const { id, verdict } of resolutions) {
      update.run(verdict.status, verdict.workload ?? null, verdict.ownerKey ?? null, id);
    }
  }

  #revoke(revocations: readonly Revocation[]): void {
    const s = this.#writers();
    for (const r of revocations) {
      const slot = `${r.key}\n${r.byAddress}\n${r.serverEndsOnly}\n${r.status}`;
      const last = this.#lastRevocation.get(slot);
      if (last !== undefined && r.fromNs <= last.to && r.toNs >= last.from) {
        if (r.fromNs >= last.from && r.toNs <= last.to) continue;
        last.from = r.fromNs < last.from ? r.fromNs : last.from;
        last.to = r.toNs > last.to ? r.toNs : last.to;
        s.extendRevocation.run(i64(last.from), i64(last.to), last.id);
        continue;
      }
      const id = Number(
        s.insertRevocation.run(
          r.key,
          r.byAddress ? 1 : 0,
          i64(r.fromNs),
          i64(r.toNs),
          r.serverEndsOnly ? 1 : 0,
          r.status,
        ).lastInsertRowid,
      );
      this.#lastRevocation.set(slot, { id, from: r.fromNs, to: r.toNs });
    }
  }
}

/**
 * The SQL conditions of `filter` on `flows_attributed AS f` (its limit aside), with its time
 * range on `timeColumn`.
 */
function flowConditions(
  filter: FlowFilter,
  timeColumn: string,
): { where: string[]; params: (string | bigint | number)[] } {
  const where: string[] = [];
  const params: (string | bigint | number)[] = [];
  if (filter.fromNs !== undefined) {
    where.push(`${timeColumn} >= ?`);
    params.push(i64(filter.fromNs));
  }
  if (filter.toNs !== undefined) {
    where.push(`${timeColumn} < ?`);
    params.push(i64(filter.toNs));
  }
  if (filter.workload !== undefined) {
    where.push("(f.local_workload_id = ? OR f.remote_workload_id = ?)");
    params.push(filter.workload, filter.workload);
  }
  if (filter.ip !== undefined) {
    where.push("(f.local_ip = ? OR f.remote_ip = ?)");
    params.push(filter.ip, filter.ip);
  }
  if (filter.hostname !== undefined) {
    where.push("f.hostname = ?");
    params.push(filter.hostname);
  }
  if (filter.attribution !== undefined) {
    where.push("f.attribution = ?");
    params.push(filter.attribution);
  }
  if (filter.recordKind !== undefined) {
    where.push("f.record_kind = ?");
    params.push(filter.recordKind);
  }
  return { where, params };
}

function prepareWriters(db: DatabaseSync) {
  const prepare = (sql: string): StatementSync => db.prepare(sql);
  return {
    hasBatch: prepare("SELECT digest FROM batches WHERE hostname = ? AND sequence = ?"),
    insertBatch: prepare(
      "INSERT INTO batches (hostname, sequence, host_workload_id, instance_id, exporter_version, " +
        "window_start_ns, window_end_ns, record_count, clock_offset_ns, kernel_drops, " +
        "recursion_misses, spool_evictions, received_ns, digest) " +
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    ),
    insertFlow: prepare(
      `INSERT INTO flows (${FLOW_COLUMNS.join(", ")}) VALUES (${
        FLOW_COLUMNS.map(() => "?").join(",")
      }) ON CONFLICT (flow_id) WHERE flow_id IS NOT NULL DO NOTHING`,
    ),
    // A stored flow moves on only while open, to a later record (or its final one); RETURNING
    // its id when it did. Run only when the insert found the flow ID stored: the common record
    // (a new flow) costs the plain insert it always did.
    moveOn: prepare(
      `UPDATE flows SET ${LATEST_COLUMNS.map((c) => `${c} = ?`).join(", ")} ` +
        "WHERE flow_id = ? AND record_kind = 'interim' AND (? = 'final' OR t_end_ns < ?) " +
        "RETURNING id",
    ),
    insertSample: prepare(
      `INSERT OR IGNORE INTO flow_samples (flow, t_ns, record_kind, ${
        SAMPLE_COUNTERS.join(", ")
      }) VALUES (?,?,?,${SAMPLE_COUNTERS.map(() => "?").join(",")})`,
    ),
    latestRecord: readingBigInts(prepare(
      "SELECT record_kind, t_end_ns, bytes_sent, bytes_retrans, bytes_acked, bytes_received " +
        "FROM flows WHERE flow_id = ?",
    )),
    resolveFlow: prepare(
      "INSERT OR IGNORE INTO settlements (attribution, remote_workload_id, owner_key, flow_id) " +
        "VALUES (?,?,?,?)",
    ),
    insertRevocation: prepare(
      "INSERT INTO revocations (key, by_address, from_ns, to_ns, server_ends_only, status) " +
        "VALUES (?,?,?,?,?,?)",
    ),
    extendRevocation: prepare("UPDATE revocations SET from_ns = ?, to_ns = ? WHERE id = ?"),
    deleteRanges: prepare("DELETE FROM ownership WHERE key = ? AND workload = ?"),
    insertRange: prepare(
      "INSERT INTO ownership (key, workload, start_ns, end_ns) VALUES (?,?,?,?)",
    ),
    upsertShared: prepare(
      "INSERT INTO shared_addresses (ip_key, end_ns) VALUES (?, ?) " +
        "ON CONFLICT (ip_key) DO UPDATE SET end_ns = max(end_ns, excluded.end_ns)",
    ),
    upsertReach: prepare(
      "INSERT INTO ownership_reach (key, forgotten_until_ns) VALUES (?, ?) " +
        "ON CONFLICT (key) DO UPDATE SET forgotten_until_ns = excluded.forgotten_until_ns",
    ),
    reachOfPruned: prepare(
      "INSERT INTO ownership_reach (key, forgotten_until_ns) " +
        "SELECT key, max(end_ns) + ? FROM ownership WHERE end_ns + ? < ? GROUP BY key " +
        "ON CONFLICT (key) DO UPDATE SET " +
        "forgotten_until_ns = max(forgotten_until_ns, excluded.forgotten_until_ns)",
    ),
    pruneRanges: prepare("DELETE FROM ownership WHERE end_ns + ? < ?"),
    pruneReach: prepare(
      "DELETE FROM ownership_reach WHERE key NOT IN (SELECT key FROM ownership)",
    ),
    pruneShared: prepare("DELETE FROM shared_addresses WHERE end_ns < ?"),
  };
}

/**
 * Rows of `flows_attributed` (with `batch_sequence`, read with `setReadBigInts(true)`) as flows;
 * flows of one boot share one boot ID array.
 */
export function toStoredFlows(rows: readonly Record<string, unknown>[]): StoredFlow[] {
  let bootId = NO_BOOT_ID;
  return rows.map((row) => {
    const flow = toStoredFlow(row, bootId);
    bootId = flow.bootId;
    return flow;
  });
}

/**
 * A row of `flows_attributed` as a flow; `sameBoot` is shared with the flow when its boot ID
 * is the same (see {@linkcode decodeFlowId}). Integers may come as numbers or bigints; `seeded`
 * as 1n or 0n. The cluster's ClickHouse store reads its rows through it too.
 */
export function toStoredFlow(r: Record<string, unknown>, sameBoot: Uint8Array): StoredFlow {
  const { bootId, cookie } = r.flow_id === null
    ? { bootId: NO_BOOT_ID, cookie: 0n }
    : decodeFlowId(r.flow_id as Uint8Array, sameBoot);
  return {
    id: Number(r.id),
    hostname: r.hostname as string,
    batchSequence: Number(r.batch_sequence),
    bootId,
    cookie,
    family: Number(r.family) as 4 | 6,
    localIp: textIp(r.local_ip),
    localPort: Number(r.local_port),
    remoteIp: textIp(r.remote_ip),
    remotePort: Number(r.remote_port),
    localWorkloadId: r.local_workload_id as string,
    identitySource: r.identity_source as IdentitySource,
    tStartNs: r.t_start_ns as bigint,
    tEndNs: r.t_end_ns as bigint,
    recordKind: (r.record_kind as RecordKind | undefined) ?? "final",
    seeded: r.seeded === 1n,
    direction: r.direction as Direction,
    closeState: r.close_state as string,
    end: r.flow_end as FlowEnd,
    error: Number(r.error),
    bytesSent: Number(r.bytes_sent),
    bytesRetrans: Number(r.bytes_retrans ?? 0),
    bytesAcked: Number(r.bytes_acked),
    bytesReceived: Number(r.bytes_received),
    segsOut: Number(r.segs_out),
    segsIn: Number(r.segs_in),
    totalRetrans: Number(r.total_retrans),
    srttUs: Number(r.srtt_us),
    minRttUs: Number(r.min_rtt_us),
    delivered: Number(r.delivered),
    lost: Number(r.lost),
    remoteWorkloadId: (r.remote_workload_id as string | null) ?? null,
    attribution: r.attribution as AttributionStatus,
    receivedNs: r.received_ns as bigint,
  };
}

function readingBigInts(stmt: StatementSync): StatementSync {
  stmt.setReadBigInts(true);
  return stmt;
}

/** A signed time as SQLite holds it: the map's "before everything" saturates at -2^63. */
function signed64(v: bigint): bigint {
  return v < INT64_MIN ? INT64_MIN : i64(v);
}

/** SQLite integers are signed 64-bit: saturate the (theoretical) larger unsigned values. */
function i64(v: bigint): bigint {
  return v > INT64_MAX ? INT64_MAX : v;
}

function textIp(value: unknown): Uint8Array {
  return parseIp(value as string);
}

function describeError(error: unknown): string {
  const message = errorText(error);
  return message.charAt(0).toLowerCase() + message.slice(1);
}
