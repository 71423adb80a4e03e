/**
 * Raw `struct fe_flow` records, as the kernel side writes them, for tests of the decoder and of
 * what handles raw records. Written field by field through the decoder's offset table, which a
 * test holds to the built library's `offsetof` values.
 *
 * @module
 */
import { RECORD_OFFSETS as AT, RECORD_SIZE } from "../lib/decode.ts";

/** Fields of a raw record; each has a realistic default. */
export interface RawFields {
  family?: 4 | 6;
  /** 16 bytes, IPv4 as ::ffff:a.b.c.d. */
  local?: number[];
  remote?: number[];
  localPort?: number;
  remotePort?: number;
  cookie?: bigint;
  tStartNs?: bigint;
  tEndNs?: bigint;
  bytesSent?: bigint;
  bytesRetrans?: bigint;
  workload?: string;
  direction?: number;
  closeState?: number;
  identitySource?: number;
  error?: number;
  flags?: number;
}

/** An IPv4 address as the kernel side stores it: ::ffff:a.b.c.d. */
export function v4Mapped(a: number, b: number, c: number, d: number): number[] {
  return [...new Array(10).fill(0), 0xff, 0xff, a, b, c, d];
}

/** One raw record. */
export function rawRecord(fields: RawFields = {}): Uint8Array {
  const buf = new Uint8Array(RECORD_SIZE);
  const v = new DataView(buf.buffer);
  v.setBigUint64(AT.t_start_ns, fields.tStartNs ?? 1_000n, true);
  v.setBigUint64(AT.t_end_ns, fields.tEndNs ?? 5_000n, true);
  v.setBigUint64(AT.bytes_sent, fields.bytesSent ?? 2n ** 40n + 7n, true); // above 2^32
  v.setBigUint64(AT.bytes_acked, 90n, true);
  v.setBigUint64(AT.bytes_received, 40_000n, true);
  v.setBigUint64(AT.bytes_retrans, fields.bytesRetrans ?? 1448n, true);
  v.setBigUint64(AT.cookie, fields.cookie ?? 4242n, true);
  v.setUint32(AT.segs_out, 11, true);
  v.setUint32(AT.segs_in, 12, true);
  v.setUint32(AT.total_retrans, 3, true);
  v.setUint32(AT.srtt_us, 250, true);
  v.setUint32(AT.min_rtt_us, 20, true);
  v.setUint32(AT.delivered, 9, true);
  v.setUint32(AT.lost, 1, true);
  buf.set(fields.local ?? v4Mapped(10, 0, 0, 1), AT.local_ip);
  buf.set(fields.remote ?? v4Mapped(192, 0, 2, 7), AT.remote_ip);
  v.setUint16(AT.local_port, fields.localPort ?? 43210, true);
  v.setUint16(AT.remote_port, fields.remotePort ?? 443, true);
  buf[AT.family] = fields.family ?? 4;
  buf[AT.direction] = fields.direction ?? 1; // outbound
  buf[AT.close_state] = fields.closeState ?? 5; // FIN_WAIT2
  buf[AT.identity_source] = fields.identitySource ?? 2; // ip-map
  buf[AT.flags] = fields.flags ?? 0;
  buf[AT.error] = fields.error ?? 0;
  if (fields.workload) buf.set(new TextEncoder().encode(fields.workload), AT.workload_id);
  return buf;
}

/** Records with cookies `first`, `first + 1`, … concatenated, as one poll delivers them. */
export function rawRecords(count: number, first = 1n): Uint8Array {
  const out = new Uint8Array(count * RECORD_SIZE);
  for (let i = 0; i < count; i++) {
    out.set(rawRecord({ cookie: first + BigInt(i) }), i * RECORD_SIZE);
  }
  return out;
}
