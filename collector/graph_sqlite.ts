/**
 * The dependency map's aggregation over the collector's SQLite database (collector/store.ts):
 * one `GROUP BY` over `flows_attributed` in the time range, on a read-only connection of its
 * own, so that a long aggregation never holds the writer's connection. A function written in
 * TypeScript runs inside the query for unattributed remote ends: their address group
 * ({@linkcode addressGroup}). The RTT percentiles of an edge (nearest rank over its flows) are
 * worked out from its flows' RTTs, which the query hands over as one text per edge: an
 * aggregate function written in TypeScript, called once a flow, costs more.
 *
 * @example
 * ```ts
 * import { SqliteGraphSource } from "./graph_sqlite.ts";
 * using source = SqliteGraphSource.open("flows.db");
 * const edges = source.edgeStats({ fromNs: 0n }); // [{ source: "workload:web", target: "workload:db", flows: 12, ... }]
 * ```
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import {
  addressGroup,
  type EdgeStats,
  edgeStatsOfRow,
  FAILED_ENDS,
  type GraphSource,
  GROUP_NODES,
  rangeBounds,
  RESET_ENDS,
  type TimeRange,
  workloadNode,
} from "./graph.ts";
import { FlowStore, type StoredFlow, StoreError, toStoredFlows } from "./store.ts";

const sql = (text: string) => `'${text.replaceAll("'", "''")}'`;
const sqlList = (texts: readonly string[]) => `(${texts.map(sql).join(", ")})`;

/**
 * Each flow of the range as (client, server) node IDs with its bytes each way; an inbound flow
 * from an attributed client is left out (the client's own agent reported it as outbound).
 */
const EDGE_ROWS = `
SELECT f.*,
  CASE WHEN direction = 'inbound' THEN peer ELSE reporter END AS client,
  CASE WHEN direction = 'inbound' THEN reporter ELSE peer END AS server,
  CASE WHEN direction = 'inbound' THEN bytes_received ELSE bytes_acked END AS to_server,
  CASE WHEN direction = 'inbound' THEN bytes_acked ELSE bytes_received END AS to_client
FROM (
  SELECT f.*,
    CASE WHEN local_workload_id <> '' THEN ${sql(workloadNode(""))} || local_workload_id
      ELSE 'unidentified:' || hostname END AS reporter,
    CASE attribution
      WHEN 'attributed' THEN ${sql(workloadNode(""))} || remote_workload_id
      WHEN 'ambiguous' THEN ${sql(GROUP_NODES.ambiguous)}
      WHEN 'pending' THEN ${sql(GROUP_NODES.pending)}
      ELSE graph_address_group(remote_ip) END AS peer
  FROM flows_attributed AS f
  WHERE t_start_ns >= ? AND t_start_ns < ?
    AND NOT (direction = 'inbound' AND attribution = 'attributed')
) AS f`;

const EDGE_STATS = `
SELECT client, server, count(*) AS flows, total(to_server) AS to_server,
  total(to_client) AS to_client, total(flow_end IN ${sqlList(FAILED_ENDS)}) AS failed,
  total(flow_end IN ${sqlList(RESET_ENDS)}) AS resets,
  group_concat(CASE WHEN srtt_us > 0 THEN srtt_us END) AS rtts
FROM (${EDGE_ROWS})
GROUP BY client, server`;

const EDGE_FLOWS = `
SELECT e.*, b.sequence AS batch_sequence
FROM (${EDGE_ROWS}) AS e JOIN batches AS b ON b.id = e.batch_id
WHERE client = ? AND server = ?
ORDER BY t_start_ns DESC, e.id DESC
LIMIT ?`;

/** {@linkcode GraphSource} over a collector database; see the module documentation. */
export class SqliteGraphSource implements GraphSource {
  readonly #db: DatabaseSync;
  readonly #stats: StatementSync;
  readonly #flows: StatementSync;

  private constructor(db: DatabaseSync) {
    this.#db = db;
    db.function("graph_address_group", { deterministic: true }, (ip) => addressGroup(String(ip)));
    this.#stats = db.prepare(EDGE_STATS);
    this.#flows = db.prepare(EDGE_FLOWS);
    this.#flows.setReadBigInts(true);
  }

  /**
   * Opens the database at `path` read-only (the collector may be writing it).
   *
   * @throws {StoreError} when it cannot be opened or has another layout version
   */
  static open(path: string): SqliteGraphSource {
    // The store's own checks (file present, layout version), with its messages.
    FlowStore.open(path, { readOnly: true }).close();
    let db: DatabaseSync | undefined;
    try {
      db = new DatabaseSync(path, { readOnly: true });
      db.exec("PRAGMA busy_timeout = 5000");
      return new SqliteGraphSource(db);
    } catch (cause) {
      db?.close();
      throw new StoreError(`Cannot open database ${path} for the graph: ${String(cause)}`, {
        cause,
      });
    }
  }

  /** See {@linkcode GraphSource.edgeStats}; SQLite answers at once. */
  edgeStats(range: TimeRange): Promise<EdgeStats[]> {
    this.#check();
    const rows = this.#stats.all(...rangeBounds(range)) as Record<string, unknown>[];
    return Promise.resolve(rows.map((r) => {
      // RTTs above 0 (0: none measured, as for a refused connect), as "250,310,…".
      return edgeStatsOfRow(r, r.rtts === null ? [] : String(r.rtts).split(",").map(Number));
    }));
  }

  /** See {@linkcode GraphSource.edgeFlows}; SQLite answers at once. */
  edgeFlows(
    source: string,
    target: string,
    range: TimeRange,
    limit: number,
  ): Promise<StoredFlow[]> {
    this.#check();
    const rows = this.#flows.all(...rangeBounds(range), source, target, limit);
    return Promise.resolve(toStoredFlows(rows as Record<string, unknown>[]));
  }

  /** Closes the connection; safe to call twice. */
  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #check(): void {
    if (!this.#db.isOpen) throw new StoreError("Cannot read the graph: its database is closed");
  }
}
