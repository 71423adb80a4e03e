/**
 * One JSON object per flow, the agent's default output: greppable like
 * tcplife's lines, but complete. Field names are the product's (snake_case);
 * times are integer ns since the epoch, written as exact JSON integers.
 *
 * @module
 */
import { formatIp } from "./map_layout.ts";
import type { FlowRecord } from "./flow.ts";
import { formatFlowId, hasFlowId } from "./flow_id.ts";

/**
 * Formats one flow as a single-line JSON object (no trailing newline). `flow_id` is
 * `<boot ID as a UUID>:<socket cookie>` ({@linkcode formatFlowId}); it and `bytes_retrans` are
 * null for a flow without a flow ID (from wire schema 1 or 2, see `hasFlowId`).
 *
 * @example
 * ```ts
 * formatFlowJson(record);
 * // {"flow_id":"5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:12345","t_start_ns":1764171840123456789,...}
 * ```
 */
export function formatFlowJson(r: FlowRecord): string {
  // Built by hand: JSON.stringify cannot write bigint, and ns times exceed 2^53.
  const known = hasFlowId(r);
  return `{"flow_id":${known ? `"${formatFlowId(r.bootId, r.cookie)}"` : "null"},` +
    `"t_start_ns":${r.tStartNs},"t_end_ns":${r.tEndNs},` +
    `"duration_ms":${Number(r.tEndNs - r.tStartNs) / 1e6},` +
    `"family":${r.family},"local_ip":"${formatIp(r.localIp)}","local_port":${r.localPort},` +
    `"remote_ip":"${formatIp(r.remoteIp)}","remote_port":${r.remotePort},` +
    `"local_workload_id":${JSON.stringify(r.localWorkloadId)},` +
    `"identity_source":"${r.identitySource}","direction":"${r.direction}",` +
    `"close_state":"${r.closeState}","end":"${r.end}","error":${r.error},"seeded":${r.seeded},` +
    (r.closeSeenBy ? `"close_seen_by":"${r.closeSeenBy}",` : "") +
    `"bytes_sent":${r.bytesSent},"bytes_retrans":${known ? r.bytesRetrans : "null"},` +
    `"bytes_acked":${r.bytesAcked},` +
    `"bytes_received":${r.bytesReceived},"segs_out":${r.segsOut},"segs_in":${r.segsIn},` +
    `"total_retrans":${r.totalRetrans},"srtt_us":${r.srttUs},"min_rtt_us":${r.minRttUs},` +
    `"delivered":${r.delivered},"lost":${r.lost}}`;
}

/**
 * Parsed form of a {@linkcode formatFlowJson} line; ns times come back as bigint, `flow_id` as
 * its text (or null, like `bytes_retrans`, for a flow without one).
 */
export type FlowJson = Record<string, string | number | boolean | bigint | null>;

/**
 * Parses a line written by {@linkcode formatFlowJson}, keeping ns times exact.
 */
export function parseFlowJson(line: string): FlowJson {
  const exact = line.replace(/"(t_start_ns|t_end_ns)":(\d+)/g, '"$1":"$2"');
  const obj = JSON.parse(exact) as FlowJson;
  obj.t_start_ns = BigInt(obj.t_start_ns as string);
  obj.t_end_ns = BigInt(obj.t_end_ns as string);
  return obj;
}
