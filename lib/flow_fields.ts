/**
 * The flow record's fields, once: what each is called in JSON lines (and the README), which
 * members of the kernel's `struct fe_flow` it comes from, its key on the wire, its column in the
 * collector, and what it means. The writers stay unrolled for speed; tests hold each of them to
 * this table (tests/flow_fields_test.ts), and the README's field table is
 * {@linkcode flowFieldReference}'s output.
 *
 * @module
 */
import type { RECORD_OFFSETS } from "./decode.ts";

/** A member of `struct fe_flow` that {@linkcode RECORD_OFFSETS} places. */
export type RecordMember = keyof typeof RECORD_OFFSETS;

/** One field of a flow record. */
export interface FlowField {
  /** Its JSON lines key, in output order. */
  name: string;
  /** The `struct fe_flow` members it is decoded from; empty when the agent derives it. */
  record: readonly RecordMember[];
  /** Whether the wire format carries it (under the same name); derived fields are not sent. */
  wire: boolean;
  /** Its column in the collector's `flows` table, when stored. */
  column?: string;
  /** What it means, for the README. */
  meaning: string;
}

/** Every field, in JSON lines order. */
export const FLOW_FIELDS: readonly FlowField[] = [
  {
    name: "flow_id",
    record: ["cookie"],
    wire: true,
    column: "flow_id",
    meaning:
      "the socket's identity: `<boot ID>:<socket cookie>`, unique on this host; two records never share one",
  },
  {
    name: "record_kind",
    record: ["flags"],
    wire: true,
    column: "record_kind",
    meaning:
      "`final`: made when the socket closed; `interim`: a snapshot of a flow still open, made at a batch window's end (`t_end_ns` is then the snapshot time, `end` is `open`, counters are cumulative); a flow has any number of interim records, then one final",
  },
  {
    name: "t_start_ns",
    record: ["t_start_ns"],
    wire: true,
    column: "t_start_ns",
    meaning:
      "wall clock, ns since the Unix epoch (an exact integer): connect() for outbound, the completed handshake for inbound",
  },
  {
    name: "t_end_ns",
    record: ["t_end_ns"],
    wire: true,
    column: "t_end_ns",
    meaning:
      "wall clock of the close, ns since the Unix epoch; of the snapshot, for an interim record; when the agent last saw the socket open, for a record its sweep made (`close_seen_by` `sweep`)",
  },
  {
    name: "duration_ms",
    record: [],
    wire: false,
    meaning: "`t_end_ns - t_start_ns` in ms",
  },
  {
    name: "family",
    record: ["family"],
    wire: true,
    column: "family",
    meaning: "4 or 6; IPv4-mapped IPv6 sockets count as 4",
  },
  {
    name: "local_ip",
    record: ["local_ip"],
    wire: true,
    column: "local_ip",
    meaning: "this host's address",
  },
  {
    name: "local_port",
    record: ["local_port"],
    wire: true,
    column: "local_port",
    meaning: "this host's port",
  },
  {
    name: "remote_ip",
    record: ["remote_ip"],
    wire: true,
    column: "remote_ip",
    meaning: "the peer's address",
  },
  {
    name: "remote_port",
    record: ["remote_port"],
    wire: true,
    column: "remote_port",
    meaning: "the peer's port",
  },
  {
    name: "local_workload_id",
    record: ["workload_id"],
    wire: true,
    column: "local_workload_id",
    meaning:
      'workload owning the local side when the connection started (its connect() or its accepted handshake; docs/identity.md); `""` when unknown',
  },
  {
    name: "identity_source",
    record: ["identity_source"],
    wire: true,
    column: "identity_source",
    meaning: "`port-map`, `ip-map`, `host` (the certificate) or `unknown`",
  },
  {
    name: "direction",
    record: ["direction"],
    wire: true,
    column: "direction",
    meaning:
      "`outbound` (this host connected), `inbound` (this host accepted), `unknown` (open before the agent started)",
  },
  {
    name: "close_state",
    record: ["close_state"],
    wire: true,
    column: "close_state",
    meaning:
      "kernel TCP state the socket closed from: `FIN_WAIT2` (closed first), `LAST_ACK` (peer closed first), `ESTABLISHED` (reset/abort), `SYN_SENT` (connect failed), `UNKNOWN` (close not seen, record made at destroy), …",
  },
  {
    name: "end",
    record: ["close_state", "error", "flags"],
    wire: true,
    column: "flow_end",
    meaning:
      "`normal`, `reset` (RST received), `aborted` (closed locally with RST: SO_LINGER 0 or unread data), `refused`, `timeout`, `failed`, `unknown` (close not seen), `open` (an interim record)",
  },
  {
    name: "error",
    record: ["error"],
    wire: true,
    column: "error",
    meaning: "socket errno at close (104 ECONNRESET, 110 ETIMEDOUT, 111 ECONNREFUSED), 0 for none",
  },
  {
    name: "seeded",
    record: ["flags"],
    wire: true,
    column: "seeded",
    meaning:
      "`true`: the socket was open before the agent started, and `t_start_ns` is when the agent first saw it",
  },
  {
    name: "close_seen_by",
    record: ["flags", "close_state"],
    wire: false,
    meaning:
      "the program that saw the close: `sock_ops` (the primary path), `tracepoint` (open before the agent and not followed by sock_ops, or no cgroup v2), `destroy` (made at destroy: no program saw the close), `sweep` (no program saw the close or the destroy: the agent's sweep found the socket gone; `t_end_ns` is when the agent last saw it open, and the counters are zero when the kernel had reused the socket's memory)",
  },
  {
    name: "bytes_sent",
    record: ["bytes_sent"],
    wire: true,
    column: "bytes_sent",
    meaning: "payload bytes sent, retransmissions included",
  },
  {
    name: "bytes_retrans",
    record: ["bytes_retrans"],
    wire: true,
    column: "bytes_retrans",
    meaning: "payload bytes retransmitted: `bytes_sent` = payload + `bytes_retrans`",
  },
  {
    name: "bytes_acked",
    record: ["bytes_acked"],
    wire: true,
    column: "bytes_acked",
    meaning:
      "payload bytes the peer acknowledged (smaller than `bytes_sent` when a reset cut data in flight)",
  },
  {
    name: "bytes_received",
    record: ["bytes_received"],
    wire: true,
    column: "bytes_received",
    meaning: "payload bytes received in order",
  },
  {
    name: "segs_out",
    record: ["segs_out"],
    wire: true,
    column: "segs_out",
    meaning: "segments sent, pure ACKs and retransmissions included",
  },
  {
    name: "segs_in",
    record: ["segs_in"],
    wire: true,
    column: "segs_in",
    meaning:
      "segments received (the accepted socket does not count the handshake the listener did)",
  },
  {
    name: "total_retrans",
    record: ["total_retrans"],
    wire: true,
    column: "total_retrans",
    meaning: "segments retransmitted",
  },
  {
    name: "srtt_us",
    record: ["srtt_us"],
    wire: true,
    column: "srtt_us",
    meaning: "smoothed RTT, µs",
  },
  {
    name: "min_rtt_us",
    record: ["min_rtt_us"],
    wire: true,
    column: "min_rtt_us",
    meaning: "minimum RTT, µs (0 when never measured)",
  },
  {
    name: "delivered",
    record: ["delivered"],
    wire: true,
    column: "delivered",
    meaning: "data segments delivered",
  },
  {
    name: "lost",
    record: ["lost"],
    wire: true,
    column: "lost",
    meaning: "data segments marked lost",
  },
];

/** The README's field table (Markdown), as `deno fmt` lays it out. */
export function flowFieldReference(): string {
  const rows = FLOW_FIELDS.map((f) => [`\`${f.name}\``, f.meaning]);
  const widths = [0, 1].map((i) => Math.max(...rows.map((r) => r[i].length), "meaning".length));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [
    line(["field", "meaning"]),
    `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`,
    ...rows.map(line),
  ].join("\n");
}
