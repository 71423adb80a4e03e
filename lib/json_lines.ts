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
  FLAG_SOCKOPS,
  RECORD_OFFSETS,
  RecordCursor,
  recordEnd,
} from "./decode.ts";
import { DIRECTIONS, FLOW_ENDS, type FlowRecord, IDENTITY_SOURCES, TCP_STATES } from "./flow.ts";
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
/** Each name written in quotes, by its code: the enumerations' JSON, encoded once. */
const quoted = (names: readonly string[]) => names.map((name) => ascii(`"${name}"`));
const IDENTITY_JSON = quoted(IDENTITY_SOURCES);
const DIRECTION_JSON = quoted(DIRECTIONS);
const STATE_JSON = quoted(TCP_STATES);
const END_JSON = new Map(FLOW_ENDS.map((end) => [end, ascii(`"${end}"`)]));
const SEEN_BY_JSON = {
  sock_ops: ascii(`"sock_ops"`),
  destroy: ascii(`"destroy"`),
  tracepoint: ascii(`"tracepoint"`),
};
const KEYS = Object.fromEntries(
  [
    ["flowId", '{"flow_id":"'],
    ["finalThenStart", '","record_kind":"final","t_start_ns":'],
    ["interimThenStart", '","record_kind":"interim","t_start_ns":'],
    ["tEnd", ',"t_end_ns":'],
    ["duration", ',"duration_ms":'],
    ["family", ',"family":'],
    ["localIp", ',"local_ip":"'],
    ["localPort", '","local_port":'],
    ["remoteIp", ',"remote_ip":"'],
    ["remotePort", '","remote_port":'],
    ["workload", ',"local_workload_id":'],
    ["identity", ',"identity_source":'],
    ["direction", ',"direction":'],
    ["state", ',"close_state":'],
    ["end", ',"end":'],
    ["error", ',"error":'],
    ["seededTrue", ',"seeded":true'],
    ["seededFalse", ',"seeded":false'],
    ["seenBy", ',"close_seen_by":'],
    ["close", "}\n"],
  ].map(([name, text]) => [name, ascii(text)]),
) as Record<string, Uint8Array>;

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
 * The counters after `close_seen_by`, in the order of formatFlowJson: each key (named as its
 * record member) and the member's offset.
 */
const counterKeys = (members: readonly (keyof typeof RECORD_OFFSETS)[]) =>
  members.map((member) => [ascii(`,"${member}":`), RECORD_OFFSETS[member]] as const);
const COUNTERS_64 = counterKeys(["bytes_sent", "bytes_retrans", "bytes_acked", "bytes_received"]);
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
  readonly #bootIdText: Uint8Array;
  #target: Uint8Array = new Uint8Array(0);
  #pos = 0;

  /**
   * @param bytes whole kernel records
   * @param clockOffsetNs wall clock minus the kernel clock of their timestamps, ns
   * @param bootId the boot ID they were captured in (16 bytes)
   */
  constructor(bytes: Uint8Array, clockOffsetNs: bigint, bootId: Uint8Array) {
    super(bytes, clockOffsetNs, bootId);
    // "<uuid>:" of formatFlowId, written before each cookie.
    this.#bootIdText = ascii(bootId.length === BOOT_ID_BYTES ? formatFlowId(bootId, 0n) : "")
      .slice(0, -1);
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
    this.#put(KEYS.flowId);
    this.#put(this.#bootIdText);
    this.#uint(this.u64(O.cookie));
    this.#put(interim ? KEYS.interimThenStart : KEYS.finalThenStart);
    this.#wallTime(O.t_start_ns);
    this.#put(KEYS.tEnd);
    this.#wallTime(O.t_end_ns);
    this.#put(KEYS.duration);
    this.#text(
      String(((endHi - startHi) * TWO_32 + (this.u32(O.t_end_ns) - this.u32(O.t_start_ns))) / 1e6),
    );
    this.#put(KEYS.family);
    this.#uint(4);
    this.#put(KEYS.localIp);
    this.#ipv4(at + O.local_ip + 12);
    this.#put(KEYS.localPort);
    this.#uint(view.getUint16(at + O.local_port, true));
    this.#put(KEYS.remoteIp);
    this.#ipv4(at + O.remote_ip + 12);
    this.#put(KEYS.remotePort);
    this.#uint(view.getUint16(at + O.remote_port, true));
    this.#put(KEYS.workload);
    target[this.#pos++] = 0x22;
    target.set(bytes.subarray(at + O.workload_id, at + O.workload_id + workloadLength), this.#pos);
    this.#pos += workloadLength;
    target[this.#pos++] = 0x22;
    this.#put(KEYS.identity);
    this.#put(IDENTITY_JSON[identity < IDENTITY_SOURCES.length ? identity : 0]);
    this.#put(KEYS.direction);
    this.#put(DIRECTION_JSON[direction < DIRECTIONS.length ? direction : 0]);
    this.#put(KEYS.state);
    this.#put(STATE_JSON[stateCode]);
    this.#put(KEYS.end);
    this.#put(END_JSON.get(recordEnd(flags, TCP_STATES[stateCode], error))!);
    this.#put(KEYS.error);
    this.#uint(error);
    this.#put((flags & FLAG_SEEDED) !== 0 ? KEYS.seededTrue : KEYS.seededFalse);
    if (!interim) {
      this.#put(KEYS.seenBy);
      this.#put(
        (flags & FLAG_SOCKOPS) !== 0
          ? SEEN_BY_JSON.sock_ops
          : stateCode === 0
          ? SEEN_BY_JSON.destroy
          : SEEN_BY_JSON.tracepoint,
      );
    }
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
    const t = this.#target;
    let p = this.#pos;
    for (let i = 0; i < bytes.length; i++) t[p++] = bytes[i];
    this.#pos = p;
  }

  #text(asciiText: string): void {
    const t = this.#target;
    let p = this.#pos;
    for (let i = 0; i < asciiText.length; i++) t[p++] = asciiText.charCodeAt(i);
    this.#pos = p;
  }

  /** A safe integer in decimal. */
  #uint(n: number): void {
    let digits = 1;
    for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
    const t = this.#target;
    let p = this.#pos + digits;
    this.#pos = p;
    do {
      t[--p] = 0x30 + (n % 10);
      n = Math.floor(n / 10);
    } while (n > 0);
  }

  #ipv4(at: number): void {
    const b = this.bytes;
    for (let i = 0; i < 4; i++) {
      if (i > 0) this.#target[this.#pos++] = 0x2e;
      this.#uint(b[at + i]);
    }
  }

  /**
   * The kernel time at `field` plus the clock offset, in decimal: the 64-bit sum is divided by
   * 10^9 over 16-bit limbs, each step exact in a double.
   */
  #wallTime(field: number): void {
    this.wallTime(field);
    const { hi, lo } = this;
    // Four steps, one per limb, unrolled: this runs twice per record.
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
    if (quotient === 0) return this.#uint(rest);
    this.#uint(quotient);
    const t = this.#target;
    let p = this.#pos + 9;
    this.#pos = p;
    for (let i = 0; i < 9; i++) {
      t[--p] = 0x30 + (rest % 10);
      rest = Math.floor(rest / 10);
    }
  }
}
