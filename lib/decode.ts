/**
 * Decodes the kernel's `struct fe_flow` records (bpf/flowexporter.h) into
 * {@linkcode FlowRecord}s. This file states the C layout once for the
 * TypeScript side; the shim's `_Static_assert` guards the size.
 *
 * @module
 */
import { toWallNs } from "./clock.ts";
import {
  type CloseSeenBy,
  DIRECTIONS,
  type FlowEnd,
  type FlowRecord,
  IDENTITY_SOURCES,
  type IdentitySource,
  TCP_STATES,
} from "./flow.ts";

/** Size of one `struct fe_flow`, bytes. */
export const RECORD_SIZE = 264;

/** `FE_FLOW_VERSION` of the layout below; the agent refuses a library of another version. */
export const RECORD_VERSION = 4;

/**
 * Byte offsets of `struct fe_flow` (host byte order: little endian on x86_64 and aarch64), in
 * the order of the shim's `FE_FLOW_FIELDS`, which asserts each with `offsetof` at build time;
 * tests/decode_test.ts compares this table with the built library's `fe_record_offsets()`.
 */
export const RECORD_OFFSETS = {
  t_start_ns: 0,
  t_end_ns: 8,
  bytes_sent: 16,
  bytes_acked: 24,
  bytes_received: 32,
  bytes_retrans: 40,
  cookie: 48,
  segs_out: 56,
  segs_in: 60,
  total_retrans: 64,
  srtt_us: 68,
  min_rtt_us: 72,
  delivered: 76,
  lost: 80,
  local_ip: 88,
  remote_ip: 104,
  local_port: 120,
  remote_port: 122,
  family: 124,
  direction: 125,
  close_state: 126,
  identity_source: 127,
  flags: 128,
  error: 129,
  workload_id: 136,
} as const;
const OFFSET = RECORD_OFFSETS;
/** Bytes of the record's workload ID field (NUL-terminated unless full). */
export const WORKLOAD_ID_LEN = 128;
/** The socket was open when the agent started (seeded by the iterator). */
export const FLAG_SEEDED = 1;
/** The close was seen by sock_ops. */
export const FLAG_SOCKOPS = 2;
/**
 * An interim record: a snapshot of a socket still open. `t_end_ns` is the snapshot time,
 * `close_state` the socket's state then; the counters are cumulative. Its final record follows.
 */
export const FLAG_INTERIM = 4;
/**
 * No program saw the close or the destroy: the sweep found the socket gone. `t_end_ns` is when the
 * agent last saw it open; the counters are zero when the kernel had reused its memory.
 */
export const FLAG_SWEPT = 8;

const ECONNRESET = 104;
const ETIMEDOUT = 110;
const ECONNREFUSED = 111;
const EPIPE = 32;

/** Raised for bytes that are not a whole number of valid records. */
export class DecodeError extends Error {
  override name = "DecodeError";
}

/**
 * Classifies how a connection ended from the state it closed from and the
 * socket error the kernel set.
 *
 * @example
 * ```ts
 * flowEnd("SYN_SENT", 111); // "refused"
 * ```
 */
export function flowEnd(closeState: string, error: number): FlowEnd {
  if (error === ECONNREFUSED) return "refused";
  if (error === ETIMEDOUT) return "timeout";
  if (error === ECONNRESET || error === EPIPE) return "reset";
  if (error !== 0) return "failed";
  switch (closeState) {
    case "UNKNOWN":
      return "unknown";
    case "FIN_WAIT2":
    case "LAST_ACK":
    case "CLOSING":
    case "TIME_WAIT":
      return "normal";
    default:
      // Closed without a FIN handshake: close() with SO_LINGER 0 or unread data sends RST.
      return "aborted";
  }
}

/**
 * How the flow of a record with these `flags` ended: `open` for an interim record, else
 * {@linkcode flowEnd} of its state and error.
 */
export function recordEnd(flags: number, closeState: string, error: number): FlowEnd {
  return (flags & FLAG_INTERIM) !== 0 ? "open" : flowEnd(closeState, error);
}

/**
 * Which program saw the close of a record with these `flags` ({@linkcode CloseSeenBy}); none for
 * an interim record, whose socket is still open.
 */
export function recordCloseSeenBy(flags: number, closeState: string): CloseSeenBy | undefined {
  if ((flags & FLAG_INTERIM) !== 0) return undefined;
  if ((flags & FLAG_SOCKOPS) !== 0) return "sock_ops";
  if ((flags & FLAG_SWEPT) !== 0) return "sweep";
  return closeState === "UNKNOWN" ? "destroy" : "tracepoint";
}

const decoder = new TextDecoder();

function u64(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 2 ** 32;
}

// Views, not copies: a record lives only as long as its poll's callback (lib/fanout.ts writes
// its JSON at once), and the next poll writes over the buffer. Copy to keep one longer.
function ip(bytes: Uint8Array, offset: number, family: 4 | 6): Uint8Array {
  return family === 4
    ? bytes.subarray(offset + 12, offset + 16)
    : bytes.subarray(offset, offset + 16);
}

/**
 * Decodes one record.
 *
 * @param bytes buffer holding the record
 * @param at byte offset of the record in `bytes`
 * @param clockOffsetNs wall clock minus the kernel's event clock, ns
 * @param bootId the host's boot ID (16 bytes) the record was captured in
 */
export function decodeFlow(
  bytes: Uint8Array,
  at: number,
  clockOffsetNs: bigint,
  bootId: Uint8Array,
): FlowRecord {
  if (at < 0 || at + RECORD_SIZE > bytes.length) {
    throw new DecodeError(
      `Cannot decode flow record at byte ${at}: ${
        bytes.length - at
      } bytes left, a record is ${RECORD_SIZE}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  return decodeAt(bytes, view, at, clockOffsetNs, bootId);
}

/** The identity source of the record at `at` of `bytes`. */
export function recordIdentitySource(bytes: Uint8Array, at: number): IdentitySource {
  return IDENTITY_SOURCES[bytes[at + OFFSET.identity_source]] ?? "unknown";
}

/** The TCP state the record at `at` of `bytes` closed from; `UNKNOWN` when made at destroy. */
export function recordCloseState(bytes: Uint8Array, at: number): string {
  return TCP_STATES[bytes[at + OFFSET.close_state]] ?? "UNKNOWN";
}

function workloadText(bytes: Uint8Array, start: number): string {
  if (bytes[start] === 0) return "";
  const nul = bytes.indexOf(0, start);
  const end = nul < 0 || nul > start + WORKLOAD_ID_LEN ? start + WORKLOAD_ID_LEN : nul;
  return decoder.decode(bytes.subarray(start, end));
}

function decodeAt(
  bytes: Uint8Array,
  view: DataView,
  at: number,
  clockOffsetNs: bigint,
  bootId: Uint8Array,
): FlowRecord {
  const rawFamily = bytes[at + OFFSET.family];
  if (rawFamily !== 4 && rawFamily !== 6) {
    throw new DecodeError(`Cannot decode flow record at byte ${at}: family ${rawFamily}`);
  }
  const family = rawFamily as 4 | 6;
  const closeState = recordCloseState(bytes, at);
  const error = bytes[at + OFFSET.error];
  const flags = bytes[at + OFFSET.flags];
  const interim = (flags & FLAG_INTERIM) !== 0;
  return {
    bootId,
    cookie: view.getBigUint64(at + OFFSET.cookie, true),
    family,
    localIp: ip(bytes, at + OFFSET.local_ip, family),
    localPort: view.getUint16(at + OFFSET.local_port, true),
    remoteIp: ip(bytes, at + OFFSET.remote_ip, family),
    remotePort: view.getUint16(at + OFFSET.remote_port, true),
    localWorkloadId: workloadText(bytes, at + OFFSET.workload_id),
    identitySource: recordIdentitySource(bytes, at),
    tStartNs: toWallNs(view.getBigUint64(at + OFFSET.t_start_ns, true), clockOffsetNs),
    tEndNs: toWallNs(view.getBigUint64(at + OFFSET.t_end_ns, true), clockOffsetNs),
    recordKind: interim ? "interim" : "final",
    seeded: (flags & FLAG_SEEDED) !== 0,
    closeSeenBy: recordCloseSeenBy(flags, closeState),
    direction: DIRECTIONS[bytes[at + OFFSET.direction]] ?? "unknown",
    closeState,
    end: recordEnd(flags, closeState, error),
    error,
    bytesSent: u64(view, at + OFFSET.bytes_sent),
    bytesRetrans: u64(view, at + OFFSET.bytes_retrans),
    bytesAcked: u64(view, at + OFFSET.bytes_acked),
    bytesReceived: u64(view, at + OFFSET.bytes_received),
    segsOut: view.getUint32(at + OFFSET.segs_out, true),
    segsIn: view.getUint32(at + OFFSET.segs_in, true),
    totalRetrans: view.getUint32(at + OFFSET.total_retrans, true),
    srttUs: view.getUint32(at + OFFSET.srtt_us, true),
    minRttUs: view.getUint32(at + OFFSET.min_rtt_us, true),
    delivered: view.getUint32(at + OFFSET.delivered, true),
    lost: view.getUint32(at + OFFSET.lost, true),
  };
}

/**
 * Decodes a buffer of whole records, as the poll loop delivers them.
 *
 * @param bytes a multiple of {@linkcode RECORD_SIZE} bytes
 * @param clockOffsetNs wall clock minus the kernel's event clock, ns
 * @param bootId the host's boot ID (16 bytes) the records were captured in
 */
export function decodeFlows(
  bytes: Uint8Array,
  clockOffsetNs: bigint,
  bootId: Uint8Array,
): FlowRecord[] {
  if (bytes.length % RECORD_SIZE !== 0) {
    throw new DecodeError(
      `Cannot decode ${bytes.length} bytes of flow records: not a multiple of ${RECORD_SIZE}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out = new Array<FlowRecord>(bytes.length / RECORD_SIZE);
  for (let i = 0; i < out.length; i++) {
    out[i] = decodeAt(bytes, view, i * RECORD_SIZE, clockOffsetNs, bootId);
  }
  return out;
}

const TWO_32 = 0x1_0000_0000;
/** Largest high half of a 64-bit number below 2^53. */
const MAX_SAFE_HI = 0x1f_ffff;

/**
 * A cursor over kernel records for the writers that read them where they lie (lib/wire.ts
 * `RecordWriter`, lib/json_lines.ts `RecordJsonWriter`): the fields as numbers, times as 32-bit
 * halves with the clock offset added, and the checks such a writer makes before taking a record
 * that way. A record a check refuses goes through {@linkcode RecordCursor.decode} instead.
 */
export class RecordCursor {
  /** Byte offset in `bytes` of the record to read. */
  at = 0;
  /** The high and low 32 bits of the last {@linkcode RecordCursor.wallTime}. */
  hi = 0;
  lo = 0;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly clockOffsetNs: bigint;
  readonly bootId: Uint8Array;
  readonly #offsetHi: number;
  readonly #offsetLo: number;
  readonly #offsetApprox: number;

  /**
   * @param bytes whole kernel records
   * @param clockOffsetNs wall clock minus the kernel clock of their timestamps, ns
   * @param bootId the boot ID they were captured in (16 bytes)
   */
  constructor(bytes: Uint8Array, clockOffsetNs: bigint, bootId: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.clockOffsetNs = clockOffsetNs;
    this.bootId = bootId;
    const offset = BigInt.asUintN(64, clockOffsetNs);
    this.#offsetHi = Number(offset >> 32n);
    this.#offsetLo = Number(offset & 0xffff_ffffn);
    this.#offsetApprox = Number(clockOffsetNs);
  }

  /**
   * Whether the record at {@linkcode RecordCursor.at} can be read field by field: it is whole,
   * of family 4 or 6, with a 16-byte boot ID, and both its times lie well inside [2^40, 2^62)
   * ns once offset (so their 64-bit sums neither wrap nor pass 2^63 - 1).
   */
  plausible(): boolean {
    const { bytes, at } = this;
    if (at < 0 || at + RECORD_SIZE > bytes.length || this.bootId.length !== 16) return false;
    const family = bytes[at + OFFSET.family];
    if (family !== 4 && family !== 6) return false;
    return this.#timeInRange(OFFSET.t_start_ns) && this.#timeInRange(OFFSET.t_end_ns);
  }

  #timeInRange(field: number): boolean {
    const approx = this.view.getUint32(this.at + field + 4, true) * TWO_32 + this.#offsetApprox;
    return approx > 2 ** 40 && approx < 2 ** 62;
  }

  /** Whether each u64 at `fields` ({@linkcode RECORD_OFFSETS} offsets) is below 2^53. */
  safe(fields: readonly number[]): boolean {
    for (let i = 0; i < fields.length; i++) {
      if (this.view.getUint32(this.at + fields[i] + 4, true) > MAX_SAFE_HI) return false;
    }
    return true;
  }

  /** The u64 at `field` as a number: exact when {@linkcode RecordCursor.safe}. */
  u64(field: number): number {
    return u64(this.view, this.at + field);
  }

  /** The u32 at `field`. */
  u32(field: number): number {
    return this.view.getUint32(this.at + field, true);
  }

  /** The byte at `field`. */
  u8(field: number): number {
    return this.bytes[this.at + field];
  }

  /**
   * The length of the workload ID when each of its bytes passes `plain` (so the bytes are their
   * own text), -1 otherwise.
   */
  workloadLength(plain: (byte: number) => boolean): number {
    const { bytes } = this;
    const start = this.at + OFFSET.workload_id;
    let length = 0;
    if (bytes[start] === 0) return 0;
    while (length < WORKLOAD_ID_LEN && bytes[start + length] !== 0) {
      if (!plain(bytes[start + length])) return -1;
      length++;
    }
    return length;
  }

  /**
   * The kernel time at `field` plus the clock offset, in {@linkcode RecordCursor.hi} and
   * {@linkcode RecordCursor.lo}: a 64-bit sum in 32-bit halves, exact for a
   * {@linkcode RecordCursor.plausible} record.
   */
  wallTime(field: number): void {
    let lo = this.view.getUint32(this.at + field, true) + this.#offsetLo;
    const carry = lo >= TWO_32 ? 1 : 0;
    lo -= carry * TWO_32;
    this.hi = (this.view.getUint32(this.at + field + 4, true) + this.#offsetHi + carry) >>> 0;
    this.lo = lo;
  }

  /** The record at {@linkcode RecordCursor.at}, decoded ({@linkcode decodeFlow}). */
  decode(): FlowRecord {
    return decodeFlow(this.bytes, this.at, this.clockOffsetNs, this.bootId);
  }
}
