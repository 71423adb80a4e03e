/**
 * Decodes the kernel's `struct fe_flow` records (bpf/flowexporter.h) into
 * {@linkcode FlowRecord}s. This file states the C layout once for the
 * TypeScript side; the shim's `_Static_assert` guards the size.
 *
 * @module
 */
import { toWallNs } from "./clock.ts";
import type { Direction, FlowEnd, FlowRecord, IdentitySource } from "./flow.ts";

/** Size of one `struct fe_flow`, bytes. */
export const RECORD_SIZE = 248;

/** Byte offsets of `struct fe_flow` (host byte order: little endian on x86_64 and aarch64). */
const OFFSET = {
  tStart: 0,
  tEnd: 8,
  bytesSent: 16,
  bytesAcked: 24,
  bytesReceived: 32,
  segsOut: 40,
  segsIn: 44,
  totalRetrans: 48,
  srttUs: 52,
  minRttUs: 56,
  delivered: 60,
  lost: 64,
  localIp: 72,
  remoteIp: 88,
  localPort: 104,
  remotePort: 106,
  family: 108,
  direction: 109,
  closeState: 110,
  identitySource: 111,
  flags: 112,
  error: 113,
  workloadId: 120,
} as const;
const WORKLOAD_ID_LEN = 128;
const FLAG_SEEDED = 1;

/** Linux TCP states by number (include/net/tcp_states.h). */
export const TCP_STATES = [
  "UNKNOWN",
  "ESTABLISHED",
  "SYN_SENT",
  "SYN_RECV",
  "FIN_WAIT1",
  "FIN_WAIT2",
  "TIME_WAIT",
  "CLOSE",
  "CLOSE_WAIT",
  "LAST_ACK",
  "LISTEN",
  "CLOSING",
  "NEW_SYN_RECV",
  "BOUND_INACTIVE",
] as const;

const DIRECTIONS: readonly Direction[] = ["unknown", "outbound", "inbound"];
const IDENTITY_SOURCES: readonly IdentitySource[] = ["unknown", "host", "ip-map", "port-map"];

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

const decoder = new TextDecoder();

function u64(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 2 ** 32;
}

// Views, not copies: the poll worker hands over a fresh buffer per batch that nothing rewrites.
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
 */
export function decodeFlow(bytes: Uint8Array, at: number, clockOffsetNs: bigint): FlowRecord {
  if (at < 0 || at + RECORD_SIZE > bytes.length) {
    throw new DecodeError(
      `Cannot decode flow record at byte ${at}: ${
        bytes.length - at
      } bytes left, a record is ${RECORD_SIZE}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  return decodeAt(bytes, view, at, clockOffsetNs);
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
): FlowRecord {
  const rawFamily = bytes[at + OFFSET.family];
  if (rawFamily !== 4 && rawFamily !== 6) {
    throw new DecodeError(`Cannot decode flow record at byte ${at}: family ${rawFamily}`);
  }
  const family = rawFamily as 4 | 6;
  const closeState = TCP_STATES[bytes[at + OFFSET.closeState]] ?? "UNKNOWN";
  const error = bytes[at + OFFSET.error];
  return {
    family,
    localIp: ip(bytes, at + OFFSET.localIp, family),
    localPort: view.getUint16(at + OFFSET.localPort, true),
    remoteIp: ip(bytes, at + OFFSET.remoteIp, family),
    remotePort: view.getUint16(at + OFFSET.remotePort, true),
    localWorkloadId: workloadText(bytes, at + OFFSET.workloadId),
    identitySource: IDENTITY_SOURCES[bytes[at + OFFSET.identitySource]] ?? "unknown",
    tStartNs: toWallNs(view.getBigUint64(at + OFFSET.tStart, true), clockOffsetNs),
    tEndNs: toWallNs(view.getBigUint64(at + OFFSET.tEnd, true), clockOffsetNs),
    seeded: (bytes[at + OFFSET.flags] & FLAG_SEEDED) !== 0,
    direction: DIRECTIONS[bytes[at + OFFSET.direction]] ?? "unknown",
    closeState,
    end: flowEnd(closeState, error),
    error,
    bytesSent: u64(view, at + OFFSET.bytesSent),
    bytesAcked: u64(view, at + OFFSET.bytesAcked),
    bytesReceived: u64(view, at + OFFSET.bytesReceived),
    segsOut: view.getUint32(at + OFFSET.segsOut, true),
    segsIn: view.getUint32(at + OFFSET.segsIn, true),
    totalRetrans: view.getUint32(at + OFFSET.totalRetrans, true),
    srttUs: view.getUint32(at + OFFSET.srttUs, true),
    minRttUs: view.getUint32(at + OFFSET.minRttUs, true),
    delivered: view.getUint32(at + OFFSET.delivered, true),
    lost: view.getUint32(at + OFFSET.lost, true),
  };
}

/**
 * Decodes a buffer of whole records, as the poll worker delivers them.
 *
 * @param bytes a multiple of {@linkcode RECORD_SIZE} bytes
 * @param clockOffsetNs wall clock minus the kernel's event clock, ns
 */
export function decodeFlows(bytes: Uint8Array, clockOffsetNs: bigint): FlowRecord[] {
  if (bytes.length % RECORD_SIZE !== 0) {
    throw new DecodeError(
      `Cannot decode ${bytes.length} bytes of flow records: not a multiple of ${RECORD_SIZE}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out = new Array<FlowRecord>(bytes.length / RECORD_SIZE);
  for (let i = 0; i < out.length; i++) {
    out[i] = decodeAt(bytes, view, i * RECORD_SIZE, clockOffsetNs);
  }
  return out;
}
