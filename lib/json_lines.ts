/**
 * One JSON object per flow, the agent's default output: greppable like
 * tcplife's lines, but complete. Field names are the product's (snake_case);
 * times are integer ns since the epoch, written as exact JSON integers.
 *
 * @module
 */
import { formatIp } from "./map_layout.ts";
import {
  decodeFlow,
  FLAG_SEEDED,
  FLAG_SOCKOPS,
  flowEnd,
  RECORD_OFFSETS,
  RECORD_SIZE,
  WORKLOAD_ID_LEN,
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

const encoder = new TextEncoder();
const TWO_32 = 0x1_0000_0000;
/** Largest high half of a 64-bit number below 2^53. */
const MAX_SAFE_HI = 0x1f_ffff;
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
    ["tStart", '","t_start_ns":'],
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
    ["seededTrue", ',"seeded":true,"close_seen_by":'],
    ["seededFalse", ',"seeded":false,"close_seen_by":'],
    ["bytesSent", ',"bytes_sent":'],
    ["bytesRetrans", ',"bytes_retrans":'],
    ["bytesAcked", ',"bytes_acked":'],
    ["bytesReceived", ',"bytes_received":'],
    ["segsOut", ',"segs_out":'],
    ["segsIn", ',"segs_in":'],
    ["totalRetrans", ',"total_retrans":'],
    ["srtt", ',"srtt_us":'],
    ["minRtt", ',"min_rtt_us":'],
    ["delivered", ',"delivered":'],
    ["lost", ',"lost":'],
    ["close", "}\n"],
  ].map(([name, text]) => [name, ascii(text)]),
) as Record<string, Uint8Array>;

/**
 * Writes kernel records (`struct fe_flow`) as JSON lines straight into bytes, each exactly the
 * line {@linkcode formatFlowJson} writes for the decoded record, newline included, without
 * building the record or the string: what makes `--output json` cheap. A record it cannot take
 * that way (another family, a workload ID that needs escaping or is not ASCII, a value past
 * 2^53 - 1, a time out of range) is decoded and formatted, so the outcome, errors included, is
 * theirs.
 */
export class RecordJsonWriter {
  /** The most bytes one line takes. */
  static readonly ROOM = 2048;
  /** Byte offset of the record to write next in `bytes`. */
  at = 0;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #clockOffsetNs: bigint;
  readonly #bootId: Uint8Array;
  readonly #bootIdText: Uint8Array;
  readonly #offsetHi: number;
  readonly #offsetLo: number;
  readonly #offsetApprox: number;
  #target: Uint8Array = new Uint8Array(0);
  #pos = 0;

  /**
   * @param bytes whole kernel records
   * @param clockOffsetNs wall clock minus the kernel clock of their timestamps, ns
   * @param bootId the boot ID they were captured in (16 bytes)
   */
  constructor(bytes: Uint8Array, clockOffsetNs: bigint, bootId: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#clockOffsetNs = clockOffsetNs;
    this.#bootId = bootId;
    this.#bootIdText = ascii(bootId.length === BOOT_ID_BYTES ? formatFlowId(bootId, 0n) : "");
    const offset = BigInt.asUintN(64, clockOffsetNs);
    this.#offsetHi = Number(offset >> 32n);
    this.#offsetLo = Number(offset & 0xffff_ffffn);
    this.#offsetApprox = Number(clockOffsetNs);
  }

  /**
   * Writes the record at {@linkcode RecordJsonWriter.at} as one JSON line into `target` at
   * `offset`, which must have {@linkcode RecordJsonWriter.ROOM} bytes from there.
   *
   * @returns the offset past the line's newline
   * @throws {import("./decode.ts").DecodeError} for a record the decoder refuses
   */
  write(target: Uint8Array, offset: number): number {
    const end = this.#writeDirect(target, offset);
    if (end >= 0) return end;
    const line = formatFlowJson(
      decodeFlow(this.#bytes, this.at, this.#clockOffsetNs, this.#bootId),
    );
    return offset + encoder.encodeInto(line + "\n", target.subarray(offset)).written;
  }

  #writeDirect(target: Uint8Array, offset: number): number {
    const b = this.#bytes;
    const view = this.#view;
    const at = this.at;
    const O = RECORD_OFFSETS;
    if (at < 0 || at + RECORD_SIZE > b.length || this.#bootId.length !== BOOT_ID_BYTES) return -1;
    const family = b[at + O.family];
    if (family !== 4) return -1; // IPv6 text takes the general path
    const workload = at + O.workload_id;
    let workloadLength = 0;
    if (b[workload] !== 0) {
      while (workloadLength < WORKLOAD_ID_LEN && b[workload + workloadLength] !== 0) {
        const c = b[workload + workloadLength];
        if (c < 0x20 || c >= 0x80 || c === 0x22 || c === 0x5c) return -1; // needs escaping
        workloadLength++;
      }
    }
    for (
      const field of [O.bytes_sent, O.bytes_retrans, O.bytes_acked, O.bytes_received, O.cookie]
    ) {
      if (view.getUint32(at + field + 4, true) > MAX_SAFE_HI) return -1;
    }
    const startHi = view.getUint32(at + O.t_start_ns + 4, true);
    const startLo = view.getUint32(at + O.t_start_ns, true);
    const endHi = view.getUint32(at + O.t_end_ns + 4, true);
    const endLo = view.getUint32(at + O.t_end_ns, true);
    for (const hi of [startHi, endHi]) {
      const approx = hi * TWO_32 + this.#offsetApprox;
      if (!(approx > 2 ** 40 && approx < 2 ** 62)) return -1;
    }
    // The duration is exact as a double while the high halves differ by less than 2^20.
    if (Math.abs(endHi - startHi) >= 2 ** 20) return -1;

    this.#target = target;
    this.#pos = offset;
    const stateCode = b[at + O.close_state] < TCP_STATES.length ? b[at + O.close_state] : 0;
    const state = TCP_STATES[stateCode];
    const error = b[at + O.error];
    const identity = b[at + O.identity_source];
    const direction = b[at + O.direction];
    const flags = b[at + O.flags];
    this.#put(KEYS.flowId);
    this.#put(this.#bootIdText); // "<uuid>:" of formatFlowId(bootId, 0n) less its "0"
    this.#pos--;
    this.#uint(this.#u64(at + O.cookie));
    this.#put(KEYS.tStart);
    this.#wallTime(startHi, startLo);
    this.#put(KEYS.tEnd);
    this.#wallTime(endHi, endLo);
    this.#put(KEYS.duration);
    this.#text(String(((endHi - startHi) * TWO_32 + (endLo - startLo)) / 1e6));
    this.#put(KEYS.family);
    this.#uint(family);
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
    target.set(b.subarray(workload, workload + workloadLength), this.#pos);
    this.#pos += workloadLength;
    target[this.#pos++] = 0x22;
    this.#put(KEYS.identity);
    this.#put(IDENTITY_JSON[identity < IDENTITY_SOURCES.length ? identity : 0]);
    this.#put(KEYS.direction);
    this.#put(DIRECTION_JSON[direction < DIRECTIONS.length ? direction : 0]);
    this.#put(KEYS.state);
    this.#put(STATE_JSON[stateCode]);
    this.#put(KEYS.end);
    this.#put(END_JSON.get(flowEnd(state, error))!);
    this.#put(KEYS.error);
    this.#uint(error);
    this.#put((flags & FLAG_SEEDED) !== 0 ? KEYS.seededTrue : KEYS.seededFalse);
    this.#put(
      (flags & FLAG_SOCKOPS) !== 0
        ? SEEN_BY_JSON.sock_ops
        : stateCode === 0
        ? SEEN_BY_JSON.destroy
        : SEEN_BY_JSON.tracepoint,
    );
    this.#put(KEYS.bytesSent);
    this.#uint(this.#u64(at + O.bytes_sent));
    this.#put(KEYS.bytesRetrans);
    this.#uint(this.#u64(at + O.bytes_retrans));
    this.#put(KEYS.bytesAcked);
    this.#uint(this.#u64(at + O.bytes_acked));
    this.#put(KEYS.bytesReceived);
    this.#uint(this.#u64(at + O.bytes_received));
    this.#put(KEYS.segsOut);
    this.#uint(view.getUint32(at + O.segs_out, true));
    this.#put(KEYS.segsIn);
    this.#uint(view.getUint32(at + O.segs_in, true));
    this.#put(KEYS.totalRetrans);
    this.#uint(view.getUint32(at + O.total_retrans, true));
    this.#put(KEYS.srtt);
    this.#uint(view.getUint32(at + O.srtt_us, true));
    this.#put(KEYS.minRtt);
    this.#uint(view.getUint32(at + O.min_rtt_us, true));
    this.#put(KEYS.delivered);
    this.#uint(view.getUint32(at + O.delivered, true));
    this.#put(KEYS.lost);
    this.#uint(view.getUint32(at + O.lost, true));
    this.#put(KEYS.close);
    return this.#pos;
  }

  #u64(field: number): number {
    return this.#view.getUint32(field, true) + this.#view.getUint32(field + 4, true) * TWO_32;
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
    const b = this.#bytes;
    for (let i = 0; i < 4; i++) {
      if (i > 0) this.#target[this.#pos++] = 0x2e;
      this.#uint(b[at + i]);
    }
  }

  /**
   * The kernel time (two halves) plus the clock offset, in decimal: the 64-bit sum is divided
   * by 10^9 over 16-bit limbs, each step exact in a double.
   */
  #wallTime(hi: number, lo: number): void {
    let sumLo = lo + this.#offsetLo;
    const carry = sumLo >= TWO_32 ? 1 : 0;
    sumLo -= carry * TWO_32;
    const sumHi = (hi + this.#offsetHi + carry) >>> 0;
    let quotient = 0;
    let rest = 0;
    for (const limb of [sumHi >>> 16, sumHi & 0xffff, sumLo >>> 16, sumLo & 0xffff]) {
      const current = rest * 0x1_0000 + limb;
      const digit = Math.floor(current / 1e9);
      rest = current - digit * 1e9;
      quotient = quotient * 0x1_0000 + digit;
    }
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
