/**
 * The dependency map's aggregation in ClickHouse (collector/graph.ts): the SQL that
 * `ClickHouseStore`'s `edgeStats` and `edgeFlows` send (clickhouse_store.ts), the rules of the SQLite
 * collector's (collector/graph_sqlite.ts) written for ClickHouse. The whole aggregation runs in
 * ClickHouse, so that a cluster's map costs its nodes one row per edge:
 * - revocations are applied in the query, as a `multiIf` over those whose stretch overlaps the
 *   range (read first; there are few: each comes from contested ownership), in the order
 *   `flows_attributed` tries them: through the owner key, then to the address;
 * - an unattributed remote address is grouped by `BLOCKS`, compared as an IPv4 number or as the
 *   bytes of an IPv6 address, the way `addressGroup` (collector/graph.ts) does.
 * Only functions ClickHouse 18.16 already had are used (see clickhouse_store.ts).
 *
 * @module
 */

import { hexOf } from "../../lib/bytes.ts";
import type { Revocation } from "../attributor.ts";
import {
  BLOCKS,
  FAILED_ENDS,
  GROUP_NODES,
  rangeBounds,
  RESET_ENDS,
  type TimeRange,
  workloadNode,
} from "../graph.ts";

/** A ClickHouse string literal. */
export function quote(text: string): string {
  return `'${text.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
}

const list = (texts: readonly string[]) => `(${texts.map(quote).join(", ")})`;

/** The prefix of an IPv4-mapped IPv6 address as stored (canonical text, lib/map_layout.ts). */
const MAPPED_PREFIX = "::ffff:";

/**
 * SQL for `addressGroup` (collector/graph.ts) of the canonical address text `ip` (an
 * expression): the group node of an unattributed remote end.
 */
export function addressGroupSql(ip: string): string {
  // Dotted text is IPv4, also after the prefix of an IPv4-mapped address; any other is IPv6.
  const mapped = `(substring(${ip}, 1, ${MAPPED_PREFIX.length}) = ${quote(MAPPED_PREFIX)} AND ` +
    `position(substring(${ip}, ${MAPPED_PREFIX.length + 1}), ':') = 0)`;
  const v4 = `(position(${ip}, ':') = 0 OR ${mapped})`;
  const v4Number = `IPv4StringToNum(if(${mapped}, substring(${ip}, ${
    MAPPED_PREFIX.length + 1
  }), ${ip}))`;
  const v6Bytes = `IPv6StringToNum(${ip})`;
  const branches: string[] = [];
  for (const block of BLOCKS) {
    let test: string;
    if (block.bytes.length === 4) {
      const bits = block.bits === 0 ? 0 : (0xffffffff << (32 - block.bits)) >>> 0;
      const net = new DataView(block.bytes.buffer, block.bytes.byteOffset).getUint32(0) & bits;
      test = `${v4} AND bitAnd(${v4Number}, ${bits}) = ${net >>> 0}`;
    } else {
      // The whole bytes of the prefix, then the masked byte it ends in.
      const whole = block.bits >> 3;
      const rest = block.bits & 7;
      const mask = (0xff << (8 - rest)) & 0xff;
      const parts = [`NOT ${v4}`];
      if (whole > 0) {
        parts.push(
          `substring(${v6Bytes}, 1, ${whole}) = unhex('${hexOf(block.bytes.subarray(0, whole))}')`,
        );
      }
      if (rest > 0) {
        parts.push(
          `bitAnd(reinterpretAsUInt8(substring(${v6Bytes}, ${whole + 1}, 1)), ${mask}) = ${
            block.bytes[whole] & mask
          }`,
        );
      }
      test = parts.join(" AND ");
    }
    branches.push(test, quote(`unattributed:${block.cidr}`));
  }
  return `multiIf(${branches.join(", ")}, ${quote(GROUP_NODES.external)})`;
}

/**
 * SQL for a flow's attribution with `revocations` applied (`flows_attributed`'s rules): the
 * first that covers an attributed flow gives its status, those through the owner key first.
 */
export function revokedAttributionSql(revocations: readonly Revocation[]): string {
  const ordered = [
    ...revocations.filter((r) => !r.byAddress),
    ...revocations.filter((r) => r.byAddress),
  ];
  if (ordered.length === 0) return "attribution";
  const branches = ordered.flatMap((r) => [
    `${r.byAddress ? "remote_key" : "ifNull(owner_key, '')"} = ${quote(r.key)} AND ` +
    `t_start_ns >= ${r.fromNs} AND t_start_ns <= ${r.toNs}` +
    (r.serverEndsOnly ? " AND direction != 'inbound'" : ""),
    quote(r.status),
  ]);
  return `multiIf(attribution != 'attributed', attribution, ${branches.join(", ")}, attribution)`;
}

/**
 * The flows of `range` as (client, server) node IDs with their bytes each way, an inbound flow
 * from an attributed client left out (graph_sqlite.ts's `EDGE_ROWS`); every column of `flows`
 * kept, the attribution as stored, and `revoked`: the attribution with the revocations applied.
 */
function edgeRows(range: TimeRange, revocations: readonly Revocation[]): string {
  const [from, to] = rangeBounds(range);
  const workload = quote(workloadNode(""));
  return `
SELECT *,
  if(direction = 'inbound', peer, reporter) AS client,
  if(direction = 'inbound', reporter, peer) AS server,
  if(direction = 'inbound', bytes_received, bytes_acked) AS to_server,
  if(direction = 'inbound', bytes_acked, bytes_received) AS to_client
FROM (
  SELECT *,
    if(local_workload_id != '', concat(${workload}, local_workload_id),
      concat('unidentified:', hostname)) AS reporter,
    multiIf(revoked = 'attributed', concat(${workload}, ifNull(remote_workload_id, '')),
      revoked = 'ambiguous', ${quote(GROUP_NODES.ambiguous)},
      revoked = 'pending', ${quote(GROUP_NODES.pending)},
      ${addressGroupSql("remote_ip")}) AS peer
  FROM (
    SELECT *, ${revokedAttributionSql(revocations)} AS revoked
    FROM flows FINAL
    WHERE t_start_ns >= ${from} AND t_start_ns < ${to}
  )
  WHERE NOT (direction = 'inbound' AND revoked = 'attributed')
)`;
}

/** The query of `edgeStats`: per (client, server), the counts and the measured RTTs. */
export function edgeStatsQuery(range: TimeRange, revocations: readonly Revocation[]): string {
  return `
SELECT client, server, count() AS flows, sum(to_server) AS to_server,
  sum(to_client) AS to_client, countIf(flow_end IN ${list(FAILED_ENDS)}) AS failed,
  countIf(flow_end IN ${list(RESET_ENDS)}) AS resets,
  groupArrayIf(srtt_us, srtt_us > 0) AS rtts
FROM (${edgeRows(range, revocations)})
GROUP BY client, server`;
}

/** The query of `edgeFlows`: the latest flows of one edge, every column of `flows`. */
export function edgeFlowsQuery(
  source: string,
  target: string,
  range: TimeRange,
  revocations: readonly Revocation[],
  limit: number,
): string {
  return `
SELECT * FROM (${edgeRows(range, revocations)})
WHERE client = ${quote(source)} AND server = ${quote(target)}
ORDER BY t_start_ns DESC, hostname DESC, flow_key DESC
LIMIT ${Math.max(0, Math.floor(limit))}`;
}

/** The query of the revocations whose stretch overlaps `range`. */
export function revocationsQuery(range: TimeRange): string {
  const [from, to] = rangeBounds(range);
  return `SELECT * FROM revocations FINAL WHERE to_ns >= ${from} AND from_ns < ${to} ` +
    "ORDER BY key, by_address, from_ns, to_ns, server_ends_only, status";
}
