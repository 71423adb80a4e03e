/**
 * Raw `struct fe_flow` records, as the kernel side writes them, for tests of the decoder and of
 * what handles raw records. Written field by field through the decoder's offset table, which a
 * test holds to the built library's `offsetof` values.
 *
 * @module
 */
import fc from "fast-check";
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

/** Wall clock minus the kernel clock of a host booted on 2026-01-01, ns. */
export const WALL_OFFSET_NS = 1_767_225_600_000_000_000n;

/**
 * Random raw records for property tests of what reads them: every byte drawn at random, then
 * the fields that steer a reader drawn from their edge cases (families, workload text, times and
 * counters around 2^53 and 2^64, clock offsets of either sign), with the clock offset to read
 * them with.
 */
export function arbitraryRawRecord(): fc.Arbitrary<{ record: Uint8Array; clockOffsetNs: bigint }> {
  const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
  return fc.record({
    family: fc.oneof(
      fc.constant(4),
      fc.constant(4),
      fc.constant(6),
      fc.integer({ min: 0, max: 9 }),
    ),
    bytes: fc.uint8Array({ minLength: RECORD_SIZE, maxLength: RECORD_SIZE }),
    workload: fc.oneof(
      fc.constant(""),
      fc.string({ maxLength: 140 }),
      fc.stringMatching(/^[a-z0-9:/._-]{1,128}$/),
    ),
    start: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 50n }), u64),
    length: fc.oneof(fc.bigInt({ min: -(2n ** 40n), max: 2n ** 45n }), u64),
    counters: fc.array(fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 40n }), u64), {
      minLength: 5,
      maxLength: 5,
    }),
    offset: fc.oneof(
      fc.constant(WALL_OFFSET_NS),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    ),
  }).map(({ family, bytes, workload, start, length, counters, offset }) => {
    const record = bytes.slice();
    const view = new DataView(record.buffer);
    record[AT.family] = family;
    record.fill(0, AT.workload_id, AT.workload_id + 128);
    record.set(new TextEncoder().encode(workload).subarray(0, 128), AT.workload_id);
    view.setBigUint64(AT.t_start_ns, start, true);
    view.setBigUint64(AT.t_end_ns, BigInt.asUintN(64, start + length), true);
    [AT.bytes_sent, AT.bytes_acked, AT.bytes_received, AT.bytes_retrans, AT.cookie].forEach(
      (field, i) => view.setBigUint64(field, counters[i], true),
    );
    if (family === 4) record.set(v4Mapped(record[AT.local_ip + 12], 7, 0, 1), AT.local_ip);
    return { record, clockOffsetNs: offset };
  });
}
