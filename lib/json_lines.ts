/**
 * One JSON object per flow, the agent's default output: greppable like
 * tcplife's lines, but complete. Field names are the product's (snake_case);
 * times are integer ns since the epoch, written as exact JSON integers.
 *
 * @module
 */
import { formatIp } from "./map_layout.ts";
import {
  FLAG_INTERIM,
  FLAG_SEEDED,
  RECORD_OFFSETS,
  recordCloseSeenBy,
  RecordCursor,
  recordEnd,
} from "./decode.ts";
import {
  CLOSE_SEEN_BY,
  type CloseSeenBy,
  DIRECTIONS,
  FLOW_ENDS,
  type FlowRecord,
  IDENTITY_SOURCES,
  RECORD_KINDS,
  TCP_STATES,
} from "./flow.ts";
import { BOOT_ID_BYTES, formatFlowId, hasFlowId } from "./flow_id.ts";

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
    `"record_kind":"${r.recordKind}","t_start_ns":${r.tStartNs},"t_end_ns":${r.tEndNs},` +
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

const encoder = new TextEncoder();
const TWO_32 = 0x1_0000_0000;
const ascii = (text: string) => encoder.encode(text);
// The text of a line between its values, encoded once. Where a value is one of an enumeration,
// its text runs from the value to the next number or address, by the value's code: fewer and
// longer copies per line.
const FLOW_ID_KEY = '{"flow_id":"';
const KEYS = {
  tEnd: ascii(',"t_end_ns":'),
  duration: ascii(',"duration_ms":'),
  familyThenLocalIp: ascii(',"family":4,"local_ip":"'),
  localPort: ascii('","local_port":'),
  remoteIp: ascii(',"remote_ip":"'),
  remotePort: ascii('","remote_port":'),
  workload: ascii(',"local_workload_id":"'),
  close: ascii("}\n"),
};
const KIND_THEN_START = RECORD_KINDS.map((kind) =>
  ascii(`","record_kind":"${kind}","t_start_ns":`)
);
const FINAL_KIND = RECORD_KINDS.indexOf("final");
const INTERIM_KIND = RECORD_KINDS.indexOf("interim");
const IDENTITY_THEN_DIRECTION = IDENTITY_SOURCES.map((name) =>
  ascii(`","identity_source":"${name}","direction":"`)
);
const DIRECTION_THEN_STATE = DIRECTIONS.map((name) => ascii(`${name}","close_state":"`));
const STATE_THEN_END = TCP_STATES.map((name) => ascii(`${name}","end":"`));
const END_THEN_ERROR = new Map(FLOW_ENDS.map((end) => [end, ascii(`${end}","error":`)]));
/** From `seeded` to the first counter's key, by seeded and `close_seen_by` (none: interim). */
const seededThenCounters = (seenBy: CloseSeenBy | undefined) =>
  [false, true].map((seeded) =>
    ascii(
      `,"seeded":${seeded}${seenBy ? `,"close_seen_by":"${seenBy}"` : ""},"bytes_sent":`,
    )
  );
const SEEDED_THEN_COUNTERS = new Map(
  [undefined, ...CLOSE_SEEN_BY].map((seenBy) => [seenBy, seededThenCounters(seenBy)]),
);

const INT32_MAX = 0x7fff_ffff;
/** "00" to "99", two ASCII digits each: decimals are written two digits per division. */
const DIGIT_PAIRS = ascii(Array.from({ length: 100 }, (_, n) => `${n}`.padStart(2, "0")).join(""));

/** Digits of a decimal integer from 0 to 2^31 - 1. */
function decimalDigits(n: number): number {
  if (n < 100_000) return n < 10 ? 1 : n < 100 ? 2 : n < 1000 ? 3 : n < 10_000 ? 4 : 5;
  return n < 1e6 ? 6 : n < 1e7 ? 7 : n < 1e8 ? 8 : n < 1e9 ? 9 : 10;
}

/** The 64-bit fields a line holds as numbers (exact below 2^53). */
const SAFE_64 = [
  RECORD_OFFSETS.bytes_sent,
  RECORD_OFFSETS.bytes_retrans,
  RECORD_OFFSETS.bytes_acked,
  RECORD_OFFSETS.bytes_received,
  RECORD_OFFSETS.cookie,
];
/** A workload ID byte JSON.stringify writes as it is: printable ASCII but `"` and `\`. */
const isPlainJson = (c: number) => c >= 0x20 && c < 0x80 && c !== 0x22 && c !== 0x5c;
/**
 * The counters after `bytes_sent`, in the order of formatFlowJson: each key (named as its record
 * member) and the member's offset.
 */
const counterKeys = (members: readonly (keyof typeof RECORD_OFFSETS)[]) =>
  members.map((member) => [ascii(`,"${member}":`), RECORD_OFFSETS[member]] as const);
const COUNTERS_64 = counterKeys(["bytes_retrans", "bytes_acked", "bytes_received"]);
const COUNTERS_32 = counterKeys(
  ["segs_out", "segs_in", "total_retrans", "srtt_us", "min_rtt_us", "delivered", "lost"],
);

/**
 * Writes kernel records (`struct fe_flow`) as JSON lines straight into bytes, each exactly the
 * line {@linkcode formatFlowJson} writes for the decoded record, newline included, without
 * building the record or the string: what makes `--output json` cheap. A record it cannot take
 * that way (another family, a workload ID that needs escaping or is not ASCII, a value past
 * 2^53 - 1, a time out of range) is decoded and formatted, so the outcome, errors included, is
 * theirs.
 */
export class RecordJsonWriter extends RecordCursor {
  /** The most bytes one line takes. */
  static readonly ROOM = 2048;
  /** `{"flow_id":"<boot ID>:`, up to the cookie. */
  readonly #lineStart: Uint8Array;
  #target: Uint8Array = new Uint8Array(0);
  #pos = 0;
  /** The second of the last time written: its 64-bit ns start in halves, and its digits. */
  readonly #second = { hi: 0, lo: 0, length: 0, digits: new Uint8Array(20) };

  /**
   * @param bytes whole kernel records
   * @param clockOffsetNs wall clock minus the kernel clock of their timestamps, ns
   * @param bootId the boot ID they were captured in (16 bytes)
   */
  constructor(bytes: Uint8Array, clockOffsetNs: bigint, bootId: Uint8Array) {
    super(bytes, clockOffsetNs, bootId);
    // "<uuid>:" of formatFlowId, written before each cookie.
    const bootIdText = bootId.length === BOOT_ID_BYTES ? formatFlowId(bootId, 0n).slice(0, -1) : "";
    this.#lineStart = ascii(FLOW_ID_KEY + bootIdText);
  }

  /**
   * Writes the record at {@linkcode RecordCursor.at} as one JSON line into `target` at
   * `offset`, which must have {@linkcode RecordJsonWriter.ROOM} bytes from there.
   *
   * @returns the offset past the line's newline
   * @throws {import("./decode.ts").DecodeError} for a record the decoder refuses
   */
  write(target: Uint8Array, offset: number): number {
    const end = this.#writeDirect(target, offset);
    if (end >= 0) return end;
    const line = formatFlowJson(this.decode()) + "\n";
    return offset + encoder.encodeInto(line, target.subarray(offset)).written;
  }

  #writeDirect(target: Uint8Array, offset: number): number {
    const O = RECORD_OFFSETS;
    // IPv6 text and escaped workload IDs take the general path.
    if (!this.plausible() || this.u8(O.family) !== 4) return -1;
    if (!this.safe(SAFE_64)) return -1;
    const workloadLength = this.workloadLength(isPlainJson);
    if (workloadLength < 0) return -1;
    const startHi = this.u32(O.t_start_ns + 4);
    const endHi = this.u32(O.t_end_ns + 4);
    // The duration is exact as a double while the high halves differ by less than 2^20.
    if (Math.abs(endHi - startHi) >= 2 ** 20) return -1;

    const { bytes, view, at } = this;
    this.#target = target;
    this.#pos = offset;
    const stateCode = this.u8(O.close_state) < TCP_STATES.length ? this.u8(O.close_state) : 0;
    const error = this.u8(O.error);
    const identity = this.u8(O.identity_source);
    const direction = this.u8(O.direction);
    const flags = this.u8(O.flags);
    const interim = (flags & FLAG_INTERIM) !== 0;
    this.#put(this.#lineStart);
    this.#uint(this.u64(O.cookie));
    this.#put(KIND_THEN_START[interim ? INTERIM_KIND : FINAL_KIND]);
    this.#wallTime(O.t_start_ns);
    this.#put(KEYS.tEnd);
    this.#wallTime(O.t_end_ns);
    this.#put(KEYS.duration);
    this.#milliseconds(
      (endHi - startHi) * TWO_32 + (this.u32(O.t_end_ns) - this.u32(O.t_start_ns)),
    );
    this.#put(KEYS.familyThenLocalIp);
    this.#ipv4(at + O.local_ip + 12);
    this.#put(KEYS.localPort);
    this.#int32(view.getUint16(at + O.local_port, true));
    this.#put(KEYS.remoteIp);
    this.#ipv4(at + O.remote_ip + 12);
    this.#put(KEYS.remotePort);
    this.#int32(view.getUint16(at + O.remote_port, true));
    this.#put(KEYS.workload);
    this.#putBytes(bytes, at + O.workload_id, workloadLength);
    this.#put(IDENTITY_THEN_DIRECTION[identity < IDENTITY_SOURCES.length ? identity : 0]);
    this.#put(DIRECTION_THEN_STATE[direction < DIRECTIONS.length ? direction : 0]);
    this.#put(STATE_THEN_END[stateCode]);
    this.#put(END_THEN_ERROR.get(recordEnd(flags, TCP_STATES[stateCode], error))!);
    this.#int32(error);
    const seenBy = SEEDED_THEN_COUNTERS.get(recordCloseSeenBy(flags, TCP_STATES[stateCode]))!;
    this.#put(seenBy[(flags & FLAG_SEEDED) !== 0 ? 1 : 0]);
    this.#uint(this.u64(O.bytes_sent));
    for (const [key, field] of COUNTERS_64) {
      this.#put(key);
      this.#uint(this.u64(field));
    }
    for (const [key, field] of COUNTERS_32) {
      this.#put(key);
      this.#uint(this.u32(field));
    }
    this.#put(KEYS.close);
    return this.#pos;
  }

  #put(bytes: Uint8Array): void {
    this.#target.set(bytes, this.#pos);
    this.#pos += bytes.length;
  }

  #text(asciiText: string): void {
    const t = this.#target;
    let p = this.#pos;
    for (let i = 0; i < asciiText.length; i++) t[p++] = asciiText.charCodeAt(i);
    this.#pos = p;
  }

  /** A safe integer in decimal. */
  #uint(n: number): void {
    if (n <= INT32_MAX) return this.#int32(n);
    // Below 2^53: at most 8 digits above the last 8, so both parts are 32-bit integers.
    const high = Math.floor(n / 1e8);
    this.#int32(high);
    this.#padded(n - high * 1e8, 8);
  }

  /**
   * An integer from 0 to 2^31 - 1 in decimal, two digits per step: the divisions are 32-bit
   * integer ones, which V8 turns into multiplications.
   */
  #int32(n: number): void {
    const t = this.#target;
    let p = this.#pos + decimalDigits(n);
    this.#pos = p;
    while (n >= 100) {
      const quotient = (n / 100) | 0;
      const pair = (n - quotient * 100) << 1;
      t[--p] = DIGIT_PAIRS[pair + 1];
      t[--p] = DIGIT_PAIRS[pair];
      n = quotient;
    }
    if (n >= 10) {
      t[--p] = DIGIT_PAIRS[(n << 1) + 1];
      t[--p] = DIGIT_PAIRS[n << 1];
    } else {
      t[--p] = 0x30 + n;
    }
  }

  /** An integer from 0 to 10^`digits` - 1 (`digits` even or not), zero-padded to `digits`. */
  #padded(n: number, digits: number): void {
    const t = this.#target;
    let p = this.#pos + digits;
    this.#pos = p;
    for (let left = digits; left > 1; left -= 2) {
      const quotient = (n / 100) | 0;
      const pair = (n - quotient * 100) << 1;
      t[--p] = DIGIT_PAIRS[pair + 1];
      t[--p] = DIGIT_PAIRS[pair];
      n = quotient;
    }
    if (digits & 1) t[--p] = 0x30 + n;
  }

  #ipv4(at: number): void {
    const b = this.bytes;
    for (let i = 0; i < 4; i++) {
      if (i > 0) this.#target[this.#pos++] = 0x2e;
      this.#int32(b[at + i]);
    }
  }

  /**
   * A duration of `ns` nanoseconds in ms, as `String(ns / 1e6)` writes it: below 10^15 ns
   * (11 days) the quotient's shortest decimal is the ns with the point moved and trailing
   * zeros dropped, since a decimal of 15 significant digits or fewer names one double.
   */
  #milliseconds(ns: number): void {
    if (ns < 0 || ns >= 1e15) return this.#text(String(ns / 1e6));
    const whole = Math.floor(ns / 1e6);
    let fraction = ns - whole * 1e6;
    this.#uint(whole);
    if (fraction === 0) return;
    let digits = 6;
    while (fraction % 10 === 0) {
      fraction /= 10;
      digits--;
    }
    this.#target[this.#pos++] = 0x2e;
    this.#padded(fraction, digits);
  }

  /**
   * The kernel time at `field` plus the clock offset, in decimal. Records come in time order,
   * so most share their second with the time before: the seconds' digits are kept from then and
   * only the nanoseconds are written. A new second is found by dividing the 64-bit sum by 10^9
   * over 16-bit limbs, each step exact in a double.
   */
  #wallTime(field: number): void {
    this.wallTime(field);
    const { hi, lo } = this;
    const second = this.#second;
    if (hi === second.hi && lo >= second.lo && lo - second.lo < 1e9 && second.length > 0) {
      this.#putBytes(second.digits, 0, second.length);
      return this.#padded(lo - second.lo, 9);
    }
    // Four steps, one per limb, unrolled.
    let current = hi >>> 16;
    let quotient = Math.floor(current / 1e9);
    let rest = current - quotient * 1e9;
    current = rest * 0x1_0000 + (hi & 0xffff);
    quotient = quotient * 0x1_0000 + Math.floor(current / 1e9);
    rest = current % 1e9;
    current = rest * 0x1_0000 + (lo >>> 16);
    quotient = quotient * 0x1_0000 + Math.floor(current / 1e9);
    rest = current % 1e9;
    current = rest * 0x1_0000 + (lo & 0xffff);
    quotient = quotient * 0x1_0000 + Math.floor(current / 1e9);
    rest = current % 1e9;
    if (quotient === 0) return this.#int32(rest);
    const start = this.#pos;
    this.#uint(quotient);
    // Where the second starts, counted from this high half (below 0 when it began in the one
    // before): the times of this high half within 10^9 of it are in the same second.
    second.hi = hi;
    second.lo = lo - rest;
    second.length = this.#pos - start;
    second.digits.set(this.#target.subarray(start, this.#pos));
    this.#padded(rest, 9);
  }

  /** `length` bytes of `bytes` from `from`: a loop, as they are few (no view to make). */
  #putBytes(bytes: Uint8Array, from: number, length: number): void {
    const t = this.#target;
    let p = this.#pos;
    for (let i = 0; i < length; i++) t[p++] = bytes[from + i];
    this.#pos = p;
  }
}
