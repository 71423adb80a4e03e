/**
 * The flow ID: which connection of which socket of which boot a {@linkcode FlowRecord}
 * describes, the same however often the record is sent. It joins the host's boot ID (16 bytes,
 * `/proc/sys/kernel/random/boot_id`) and the kernel's socket cookie (unique per socket within
 * one boot; a socket's later connections, after a failed connect or a disconnect, are counted
 * from bit 48 up, FE_CONNECTION_SHIFT in bpf/flowexporter.h). On the wire and in the collector's database it is 24 bytes
 * ({@linkcode encodeFlowId}); in JSON, `<boot ID as a UUID>:<cookie>` ({@linkcode formatFlowId}).
 *
 * Flows of wire schema versions 1 and 2 carry neither a flow ID nor `bytes_retrans`: they are
 * read with the empty {@linkcode NO_BOOT_ID}, cookie 0 and `bytesRetrans` 0, and
 * {@linkcode hasFlowId} tells them apart.
 *
 * @example
 * ```ts
 * import { formatFlowId, parseBootId } from "./flow_id.ts";
 * const bootId = parseBootId(Deno.readTextFileSync("/proc/sys/kernel/random/boot_id"));
 * formatFlowId(bootId, 12345n); // "5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:12345"
 * ```
 *
 * @module
 */

import { HEX_DIGITS } from "./bytes.ts";
import type { FlowRecord } from "./flow.ts";

/** Bytes of a boot ID. */
export const BOOT_ID_BYTES = 16;

/** Bytes of an encoded flow ID: the boot ID, then the cookie as a big-endian u64. */
export const FLOW_ID_BYTES = BOOT_ID_BYTES + 8;

/**
 * The boot ID of a flow without a flow ID (wire schema 1 or 2): empty, and shared by all of
 * them.
 */
export const NO_BOOT_ID: Uint8Array = new Uint8Array(0);

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The boot ID {@linkcode formatFlowId} formatted last, and its text. */
let lastBootId: Uint8Array | undefined;
let lastBootIdText = "";

/**
 * True when `record` has a flow ID; false for flows of wire schema 1 and 2, which have no
 * `bytes_retrans` either.
 *
 * @param record the flow
 * @returns whether `record.bootId` is a boot ID rather than {@linkcode NO_BOOT_ID}
 */
export function hasFlowId(record: Pick<FlowRecord, "bootId">): boolean {
  return record.bootId.length !== 0;
}

/**
 * Reads a boot ID from its text, as `/proc/sys/kernel/random/boot_id` holds it (a UUID; the
 * trailing newline and letter case do not matter).
 *
 * @param text the UUID, e.g. `5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60\n`
 * @returns the 16 bytes
 * @throws {SyntaxError} when `text` is not a UUID
 */
export function parseBootId(text: string): Uint8Array {
  const uuid = text.trim();
  if (!UUID.test(uuid)) {
    throw new SyntaxError(
      `Invalid boot ID ${
        JSON.stringify(uuid.length > 40 ? uuid.slice(0, 40) + "…" : uuid)
      }: expected a UUID such as 5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60`,
    );
  }
  const hex = uuid.replaceAll("-", "");
  return Uint8Array.from(
    { length: BOOT_ID_BYTES },
    (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16),
  );
}

/**
 * Formats a flow ID as text: the boot ID as a canonical UUID (lower case, with dashes), a
 * colon, the cookie in decimal. The UUID of the last boot ID seen is kept, so that formatting
 * the flows of one boot costs one UUID.
 *
 * @param bootId the host's boot ID, 16 bytes
 * @param cookie the socket cookie
 * @returns e.g. `5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:12345`
 * @throws {RangeError} when `bootId` is not 16 bytes long
 */
export function formatFlowId(bootId: Uint8Array, cookie: bigint): string {
  if (bootId !== lastBootId) {
    lastBootIdText = formatUuid(bootId);
    lastBootId = bootId;
  }
  return `${lastBootIdText}:${cookie}`;
}

/**
 * Encodes a flow ID as its 24 bytes: the boot ID, then the cookie as a big-endian u64.
 *
 * @param bootId the host's boot ID, 16 bytes
 * @param cookie the socket cookie, 0 to 2^64 - 1
 * @returns a new array of {@linkcode FLOW_ID_BYTES} bytes
 * @throws {RangeError} when `bootId` is not 16 bytes long or `cookie` is out of range
 */
export function encodeFlowId(bootId: Uint8Array, cookie: bigint): Uint8Array {
  if (bootId.length !== BOOT_ID_BYTES) {
    throw new RangeError(`Cannot encode a flow ID: the boot ID has ${bootId.length} bytes, not 16`);
  }
  const bytes = new Uint8Array(FLOW_ID_BYTES);
  bytes.set(bootId);
  new DataView(bytes.buffer).setBigUint64(BOOT_ID_BYTES, cookie);
  return bytes;
}

/**
 * Splits an encoded flow ID into its boot ID and cookie.
 *
 * @param bytes the {@linkcode FLOW_ID_BYTES} bytes {@linkcode encodeFlowId} wrote
 * @param sameBoot a boot ID to return instead of a copy when the bytes hold the same one, so
 *   that the flows of one boot share one instance
 * @returns the boot ID (a copy, or `sameBoot`) and the cookie
 * @throws {RangeError} when `bytes` is not 24 bytes long
 */
export function decodeFlowId(
  bytes: Uint8Array,
  sameBoot?: Uint8Array,
): { bootId: Uint8Array; cookie: bigint } {
  if (bytes.length !== FLOW_ID_BYTES) {
    throw new RangeError(`Cannot decode a flow ID: ${bytes.length} bytes, not ${FLOW_ID_BYTES}`);
  }
  const cookie = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .getBigUint64(BOOT_ID_BYTES);
  let bootId = sameBoot;
  for (let i = 0; bootId !== undefined && i < BOOT_ID_BYTES; i++) {
    if (bootId[i] !== bytes[i]) bootId = undefined;
  }
  return { bootId: bootId ?? bytes.slice(0, BOOT_ID_BYTES), cookie };
}

function formatUuid(b: Uint8Array): string {
  if (b.length !== BOOT_ID_BYTES) {
    throw new RangeError(`Cannot format a flow ID: the boot ID has ${b.length} bytes, not 16`);
  }
  const h = (from: number, to: number) => {
    let text = "";
    for (let i = from; i < to; i++) text += HEX_DIGITS[b[i]];
    return text;
  };
  return `${h(0, 4)}-${h(4, 6)}-${h(6, 8)}-${h(8, 10)}-${h(10, 16)}`;
}
