/**
 * The cluster collector's store: flows and revocations in ClickHouse (tables in
 * `schema/clickhouse.sql`), written by the sink in batches and read by `flowexporter query
 * --clickhouse` and a node's `GET /v1/flows`, through the official `@clickhouse/client` over
 * HTTP. Only what ClickHouse has kept from 18.16 (Debian's) to current releases is used: no
 * query parameters (values are quoted here), no newer types. Flows and batches go in as
 * RowBinary (row_binary.ts), written once at ingest ({@linkcode writeFlowRow},
 * {@linkcode writeBatchRow}) and completed by the sink with the verdict
 * ({@linkcode writeVerdict}): no JSON per flow, and 64-bit integers lose no precision.
 *
 * Reads use `FINAL`, so a flow stored twice (a replay, a redelivery) or settled later (a held
 * flow) is one row, its latest version; revocations are applied to what is read, as the
 * SQLite collector's `flows_attributed` view does.
 *
 * @example
 * ```ts
 * import { ClickHouseStore } from "./clickhouse_store.ts";
 * await using store = await ClickHouseStore.open("http://127.0.0.1:8123");
 * const flows = await store.flows({ workload: "checkout", limit: 100 });
 * ```
 *
 * @module
 */

import { Readable } from "node:stream";
import { type ClickHouseClient, ClickHouseLogLevel, createClient } from "@clickhouse/client";
import type { FlowRecord } from "../../lib/flow.ts";
import type { BatchHeader } from "../../lib/wire.ts";
import { encodeFlowId, hasFlowId, NO_BOOT_ID } from "../../lib/flow_id.ts";
import { formatIp } from "../../lib/map_layout.ts";
import { errorText } from "../../lib/error_text.ts";
import { hexOf } from "../../lib/bytes.ts";
import type { Revocation, Verdict } from "../attributor.ts";
import { type FlowFilter, type StoredFlow, toStoredFlow } from "../store.ts";
import { type EdgeStats, edgeStatsOfRow, type GraphSource, type TimeRange } from "../graph.ts";
import type { RowBinaryWriter } from "./row_binary.ts";
import { edgeFlowsQuery, edgeStatsQuery, quote, revocationsQuery } from "./clickhouse_graph.ts";

/** The SQL of the tables, one source: `schema/clickhouse.sql`. */
export const CLICKHOUSE_SCHEMA_URL = new URL("../../schema/clickhouse.sql", import.meta.url);

/**
 * Columns of `flows` (schema/clickhouse.sql) that ingest writes, in this order, with
 * {@linkcode writeFlowRow}: everything but the attribution.
 */
export const FLOW_ROW_COLUMNS = [
  ...["hostname", "flow_key", "batch_sequence", "flow_index", "flow_id", "t_start_ns"],
  ...["t_end_ns", "family", "local_ip", "local_port", "remote_ip", "remote_port"],
  ...["local_workload_id", "identity_source", "seeded", "direction", "close_state"],
  ...["flow_end", "error", "bytes_sent", "bytes_retrans", "bytes_acked", "bytes_received"],
  ...["segs_out", "segs_in", "total_retrans", "srtt_us", "min_rtt_us", "delivered", "lost"],
  ...["remote_key", "received_ns"],
] as const;

/** Columns of `flows` the sink appends to each row, with {@linkcode writeVerdict}. */
export const VERDICT_COLUMNS = [
  "version",
  "attribution",
  "remote_workload_id",
  "owner_key",
] as const;

/** Columns of `batches`, in the order {@linkcode writeBatchRow} writes them. */
export const BATCH_COLUMNS = [
  "hostname",
  "sequence",
  "host_workload_id",
  "instance_id",
  "exporter_version",
  "window_start_ns",
  "window_end_ns",
  "record_count",
  "clock_offset_ns",
  "kernel_drops",
  "recursion_misses",
  "spool_evictions",
  "received_ns",
  "digest",
] as const;

/**
 * Appends the {@linkcode FLOW_ROW_COLUMNS} of one flow, RowBinary.
 *
 * @param index the flow's index in its batch
 * @param remoteKey address key of its remote end
 * @param remoteIp its remote address as text (`formatIp`), made for the key already
 */
export function writeFlowRow(
  w: RowBinaryWriter,
  host: string,
  sequence: number,
  index: number,
  f: FlowRecord,
  remoteKey: string,
  remoteIp: string,
  receivedNs: bigint,
): void {
  const known = hasFlowId(f);
  const flowId = known ? flowIdHex(f.bootId, f.cookie) : null;
  w.string(host);
  w.string(flowId ?? `${sequence}:${index}`);
  w.uint64(sequence);
  w.int32(index);
  w.nullableString(flowId);
  w.int64(f.tStartNs);
  w.int64(f.tEndNs);
  w.uint8(f.family);
  w.string(localIpText(f.localIp));
  w.uint16(f.localPort);
  w.string(remoteIp);
  w.uint16(f.remotePort);
  w.string(f.localWorkloadId);
  w.string(f.identitySource);
  w.uint8(f.seeded ? 1 : 0);
  w.string(f.direction);
  w.string(f.closeState);
  w.string(f.end);
  w.int32(f.error);
  w.uint64(f.bytesSent);
  w.nullableUint64(known ? f.bytesRetrans : null);
  w.uint64(f.bytesAcked);
  w.uint64(f.bytesReceived);
  w.uint64(f.segsOut);
  w.uint64(f.segsIn);
  w.uint64(f.totalRetrans);
  w.uint64(f.srttUs);
  w.uint64(f.minRttUs);
  w.uint64(f.delivered);
  w.uint64(f.lost);
  w.string(remoteKey);
  w.int64(receivedNs);
}

/**
 * The last boot ID's hex and the last local address's text: a batch's flows share one boot
 * and mostly one or two local addresses, and every row writes both.
 */
const lastText = {
  bootId: NO_BOOT_ID,
  bootHex: "",
  localIp: new Uint8Array(0),
  local: "",
};

/**
 * `hexOf(encodeFlowId(bootId, cookie))` (a decoded flow's cookie is a u64), the boot ID's part
 * kept while it repeats.
 */
function flowIdHex(bootId: Uint8Array, cookie: bigint): string {
  if (bootId !== lastText.bootId) {
    // Through encodeFlowId, which checks that the boot ID is 16 bytes.
    lastText.bootHex = hexOf(encodeFlowId(bootId, 0n).subarray(0, bootId.length));
    lastText.bootId = bootId;
  }
  return lastText.bootHex + cookie.toString(16).padStart(16, "0");
}

/** `formatIp(ip)`, kept while the address repeats. */
function localIpText(ip: Uint8Array): string {
  const last = lastText.localIp;
  let same = last.length === ip.length;
  for (let i = 0; same && i < ip.length; i++) same = last[i] === ip[i];
  if (!same) {
    lastText.local = formatIp(ip);
    lastText.localIp = ip.slice();
  }
  return lastText.local;
}

/** Appends the {@linkcode VERDICT_COLUMNS} of one flow, RowBinary. */
export function writeVerdict(w: RowBinaryWriter, version: number, v: Verdict): void {
  w.uint8(version);
  w.string(v.status);
  w.nullableString(v.workload);
  w.nullableString(v.ownerKey);
}

/** Appends the {@linkcode BATCH_COLUMNS} of one batch, RowBinary; `digest` is SHA-256. */
export function writeBatchRow(
  w: RowBinaryWriter,
  h: BatchHeader,
  receivedNs: bigint,
  digest: Uint8Array,
): void {
  w.string(h.host.hostname);
  w.uint64(h.sequence);
  w.string(h.host.workloadId);
  w.nullableString(h.host.instanceId);
  w.string(h.exporterVersion);
  w.int64(h.windowStartNs);
  w.int64(h.windowEndNs);
  w.uint64(h.recordCount);
  w.int64(h.clockOffsetNs);
  w.uint64(h.loss.kernelDrops);
  w.uint64(h.loss.recursionMisses);
  w.uint64(h.loss.spoolEvictions);
  w.int64(receivedNs);
  w.string(hexOf(digest));
}

/** One stored batch as read back: its header fields and loss counters (`batches`). */
export interface StoredBatch {
  readonly hostname: string;
  readonly sequence: number;
  readonly hostWorkloadId: string;
  readonly instanceId: string | null;
  readonly exporterVersion: string;
  readonly windowStartNs: bigint;
  readonly windowEndNs: bigint;
  readonly recordCount: number;
  readonly clockOffsetNs: bigint;
  readonly kernelDrops: bigint;
  readonly recursionMisses: bigint;
  readonly spoolEvictions: number;
  readonly receivedNs: bigint;
  /** SHA-256 of the batch body, hex. */
  readonly digest: string;
}

/** ClickHouse cannot be reached or refused a statement; the message says which. */
export class ClickHouseError extends Error {
  /** Creates the error; `message` is one sentence-case line. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ClickHouseError";
  }
}

/** Rows per piece of an INSERT's body. */
const ROWS_PER_CHUNK = 1000;
/** Most revocation keys asked for in one statement. */
const KEYS_PER_QUERY = 1000;

/** Flows and revocations in ClickHouse; see the module documentation. */
export class ClickHouseStore implements AsyncDisposable, GraphSource {
  readonly #client: ClickHouseClient;
  readonly #url: string;

  private constructor(client: ClickHouseClient, url: string) {
    this.#client = client;
    this.#url = url;
  }

  /**
   * Connects and, unless `readOnly`, creates the tables that are missing.
   *
   * @param url ClickHouse's HTTP interface, `http://host:8123` (user and password in the URL)
   * @throws {ClickHouseError} naming the URL when ClickHouse cannot be reached
   */
  static async open(url: string, options: { readOnly?: boolean } = {}): Promise<ClickHouseStore> {
    // Its own log is off: every failure reaches the caller as a ClickHouseError.
    const client = createClient({
      url,
      request_timeout: 30_000,
      log: { level: ClickHouseLogLevel.OFF },
    });
    const store = new ClickHouseStore(client, url);
    if (options.readOnly) return store;
    try {
      const schema = await Deno.readTextFile(CLICKHOUSE_SCHEMA_URL);
      for (const statement of sqlStatements(schema)) await store.#command(statement);
    } catch (error) {
      await client.close();
      throw error;
    }
    return store;
  }

  /**
   * Writes flows in one INSERT: RowBinary of {@linkcode FLOW_ROW_COLUMNS} then
   * {@linkcode VERDICT_COLUMNS}, in pieces sent one after the other as one stream.
   */
  async insertFlowRows(pieces: readonly Uint8Array[]): Promise<void> {
    await this.#insertBinary("flows", [...FLOW_ROW_COLUMNS, ...VERDICT_COLUMNS], pieces);
  }

  /** Writes batches' rows, RowBinary of {@linkcode BATCH_COLUMNS}. */
  async insertBatchRows(rows: Uint8Array): Promise<void> {
    await this.#insertBinary("batches", BATCH_COLUMNS, [rows]);
  }

  /** Writes revocations in one INSERT. */
  async insertRevocations(revocations: readonly Revocation[]): Promise<void> {
    if (revocations.length === 0) return;
    await this.#insert(
      "revocations",
      revocations,
      (r) =>
        `{"key":${JSON.stringify(r.key)},"by_address":${r.byAddress ? 1 : 0},` +
        `"from_ns":${r.fromNs},"to_ns":${r.toNs},"server_ends_only":${
          r.serverEndsOnly ? 1 : 0
        },"status":"${r.status}"}`,
    );
  }

  /** Flows matching `filter`, by start time, each once, with revocations applied. */
  async flows(filter: FlowFilter = {}): Promise<StoredFlow[]> {
    // Nodes store closed flows only (interim records are heartbeats there): none is open.
    if (filter.recordKind === "interim") return [];
    const where: string[] = [];
    if (filter.fromNs !== undefined) where.push(`t_start_ns >= ${filter.fromNs}`);
    if (filter.toNs !== undefined) where.push(`t_start_ns < ${filter.toNs}`);
    if (filter.workload !== undefined) {
      const w = quote(filter.workload);
      where.push(`(local_workload_id = ${w} OR remote_workload_id = ${w})`);
    }
    if (filter.ip !== undefined) {
      const ip = quote(filter.ip);
      where.push(`(local_ip = ${ip} OR remote_ip = ${ip})`);
    }
    if (filter.hostname !== undefined) where.push(`hostname = ${quote(filter.hostname)}`);
    // A revocation turns `attributed` into `ambiguous` or `unattributed`: those statuses
    // are looked for among attributed flows too, and the filter applied after revocations.
    const status = filter.attribution;
    if (status !== undefined) {
      where.push(
        status === "ambiguous" || status === "unattributed"
          ? `attribution IN (${quote(status)}, 'attributed')`
          : `attribution = ${quote(status)}`,
      );
    }
    const limit = filter.limit ?? 1000;
    const out: StoredFlow[] = [];
    const page = limit < 0 ? 100_000 : Math.max(limit, 1000);
    for (let offset = 0;; offset += page) {
      const rows = await this.#select(
        `SELECT * FROM flows FINAL ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""} ` +
          `ORDER BY t_start_ns, hostname, flow_key LIMIT ${offset}, ${page}`,
      );
      const flows = await this.#revoked(rows.map(toFlow));
      for (const flow of flows) {
        if (status !== undefined && flow.attribution !== status) continue;
        if (
          filter.workload !== undefined && flow.localWorkloadId !== filter.workload &&
          flow.remoteWorkloadId !== filter.workload
        ) continue;
        out.push(flow);
        if (limit >= 0 && out.length === limit) return out;
      }
      if (rows.length < page) return out;
    }
  }

  /**
   * See {@linkcode GraphSource.edgeStats}: aggregated in ClickHouse, revocations applied
   * (clickhouse_graph.ts).
   */
  async edgeStats(range: TimeRange): Promise<EdgeStats[]> {
    const revocations = await this.#revocationsIn(range);
    const rows = await this.#select(edgeStatsQuery(range, revocations));
    // 64-bit integers arrive quoted.
    return rows.map((r) => edgeStatsOfRow(r, (r.rtts as (string | number)[]).map(Number)));
  }

  /** See {@linkcode GraphSource.edgeFlows}. */
  async edgeFlows(
    source: string,
    target: string,
    range: TimeRange,
    limit: number,
  ): Promise<StoredFlow[]> {
    const revocations = await this.#revocationsIn(range);
    const rows = await this.#select(edgeFlowsQuery(source, target, range, revocations, limit));
    // The query applied the revocations already (its `revoked`): no second read of them.
    return rows.map((r) => {
      const flow = toFlow(r);
      return r.revoked === flow.attribution
        ? flow
        : { ...flow, attribution: r.revoked as StoredFlow["attribution"], remoteWorkloadId: null };
    });
  }

  /** Flows stored, each counted once (`FINAL`), for tests and metrics. */
  async countFlows(): Promise<number> {
    const rows = await this.#select("SELECT count() AS n FROM flows FINAL");
    return Number(rows[0].n);
  }

  /**
   * Stored batches with their loss counters, each once, by host and sequence (the SQLite
   * collector's `batches` table).
   */
  async batches(filter: { hostname?: string } = {}): Promise<StoredBatch[]> {
    const where = filter.hostname === undefined ? "" : `WHERE hostname = ${quote(filter.hostname)}`;
    const rows = await this.#select(
      `SELECT * FROM batches FINAL ${where} ORDER BY hostname, sequence`,
    );
    return rows.map((r) => ({
      hostname: r.hostname as string,
      sequence: Number(r.sequence),
      hostWorkloadId: r.host_workload_id as string,
      instanceId: r.instance_id as string | null,
      exporterVersion: r.exporter_version as string,
      windowStartNs: BigInt(r.window_start_ns as string),
      windowEndNs: BigInt(r.window_end_ns as string),
      recordCount: Number(r.record_count),
      clockOffsetNs: BigInt(r.clock_offset_ns as string),
      kernelDrops: BigInt(r.kernel_drops as string),
      recursionMisses: BigInt(r.recursion_misses as string),
      spoolEvictions: Number(r.spool_evictions),
      receivedNs: BigInt(r.received_ns as string),
      digest: r.digest as string,
    }));
  }

  /** Closes the HTTP client; safe to call twice. */
  async close(): Promise<void> {
    await this.#client.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** The flows with the revocations that cover them applied (`flows_attributed`'s rules). */
  async #revoked(flows: StoredFlow[]): Promise<StoredFlow[]> {
    const attributed = flows.filter((f) => f.attribution === "attributed");
    if (attributed.length === 0) return flows;
    const keys = new Set<string>();
    for (const f of attributed) {
      keys.add((f as StoredFlowWithKeys).ownerKey);
      keys.add((f as StoredFlowWithKeys).remoteKey);
    }
    const byKey = new Map<string, Revocation[]>();
    const list = [...keys];
    for (let i = 0; i < list.length; i += KEYS_PER_QUERY) {
      const rows = await this.#select(
        `SELECT * FROM revocations FINAL WHERE key IN (${
          list.slice(i, i + KEYS_PER_QUERY).map(quote).join(",")
        })`,
      );
      for (const r of rows) {
        const revocation = toRevocation(r);
        const slot = byKey.get(revocation.key);
        if (slot === undefined) byKey.set(revocation.key, [revocation]);
        else slot.push(revocation);
      }
    }
    if (byKey.size === 0) return flows;
    return flows.map((f) => {
      if (f.attribution !== "attributed") return f;
      const { ownerKey, remoteKey } = f as StoredFlowWithKeys;
      const covers = (r: Revocation, byAddress: boolean) =>
        r.byAddress === byAddress && r.fromNs <= f.tStartNs && r.toNs >= f.tStartNs &&
        (!r.serverEndsOnly || f.direction !== "inbound");
      const revocation = byKey.get(ownerKey)?.find((r) => covers(r, false)) ??
        byKey.get(remoteKey)?.find((r) => covers(r, true));
      return revocation === undefined
        ? f
        : { ...f, attribution: revocation.status, remoteWorkloadId: null };
    });
  }

  /** The revocations whose stretch overlaps `range`. */
  async #revocationsIn(range: TimeRange): Promise<Revocation[]> {
    return (await this.#select(revocationsQuery(range))).map(toRevocation);
  }

  /** One INSERT of RowBinary rows of `columns`, sent piece by piece; none for no rows. */
  async #insertBinary(
    table: string,
    columns: readonly string[],
    pieces: readonly Uint8Array[],
  ): Promise<void> {
    const bytes = pieces.reduce((n, piece) => n + piece.length, 0);
    if (bytes === 0) return;
    try {
      const result = await this.#client.exec({
        query: `INSERT INTO ${table} (${columns.join(", ")}) FORMAT RowBinary`,
        values: Readable.from(pieces),
      });
      result.stream.resume();
      await new Promise((resolve) => result.stream.once("close", resolve));
    } catch (error) {
      throw this.#error(`insert ${bytes} bytes of rows into ${table}`, error);
    }
  }

  /** One INSERT of `items` as JSONEachRow, written as the request body streams. */
  async #insert<T>(table: string, items: readonly T[], json: (item: T) => string): Promise<void> {
    // Rows go out in chunks made as the request is sent: no body-sized string in memory.
    function* chunks() {
      for (let i = 0; i < items.length; i += ROWS_PER_CHUNK) {
        yield items.slice(i, i + ROWS_PER_CHUNK).map(json).join("\n") + "\n";
      }
    }
    try {
      const result = await this.#client.exec({
        query: `INSERT INTO ${table} FORMAT JSONEachRow`,
        values: Readable.from(chunks()),
      });
      result.stream.resume();
      await new Promise((resolve) => result.stream.once("close", resolve));
    } catch (error) {
      throw this.#error(`insert ${items.length} rows into ${table}`, error);
    }
  }

  async #command(query: string): Promise<void> {
    try {
      await this.#client.command({ query });
    } catch (error) {
      throw this.#error("create the tables", error);
    }
  }

  async #select(query: string): Promise<Record<string, unknown>[]> {
    try {
      const result = await this.#client.query({ query, format: "JSONEachRow" });
      return await result.json<Record<string, unknown>>();
    } catch (error) {
      throw this.#error("read flows", error);
    }
  }

  #error(action: string, error: unknown): ClickHouseError {
    return new ClickHouseError(
      `Cannot ${action} in ClickHouse at ${redact(this.#url)}: ${errorText(error)}`,
      { cause: error },
    );
  }
}

/** A stored flow as read here, with the keys revocations are matched by. */
interface StoredFlowWithKeys extends StoredFlow {
  readonly ownerKey: string;
  readonly remoteKey: string;
}

/** The statements of a SQL file: split at `;`, comments dropped. */
export function sqlStatements(sql: string): string[] {
  return sql.split("\n").filter((line) => !line.trimStart().startsWith("--")).join("\n")
    .split(";").map((s) => s.trim()).filter((s) => s !== "");
}

/** A row of `revocations` (64-bit integers arrive quoted). */
function toRevocation(r: Record<string, unknown>): Revocation {
  return {
    key: r.key as string,
    byAddress: Number(r.by_address) === 1,
    fromNs: BigInt(r.from_ns as string),
    toNs: BigInt(r.to_ns as string),
    serverEndsOnly: Number(r.server_ends_only) === 1,
    status: r.status as Revocation["status"],
  };
}

/** A row of `flows` (64-bit integers arrive quoted) as a stored flow, through the SQLite row's. */
function toFlow(r: Record<string, unknown>): StoredFlowWithKeys {
  const flow = toStoredFlow({
    ...r,
    id: r.flow_index,
    flow_id: r.flow_id === null ? null : unhex(r.flow_id as string),
    t_start_ns: BigInt(r.t_start_ns as string),
    t_end_ns: BigInt(r.t_end_ns as string),
    received_ns: BigInt(r.received_ns as string),
    seeded: BigInt(r.seeded as number),
  }, NO_BOOT_ID);
  return {
    ...flow,
    ownerKey: (r.owner_key as string | null) ?? "",
    remoteKey: r.remote_key as string,
  };
}

function unhex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The URL without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString().replace(/\/$/, "");
  } catch {
    return "(invalid URL)";
  }
}
