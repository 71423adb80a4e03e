/**
 * Byte layouts of the pinned identity maps (`ip_workload`, `port_workload`), as
 * bpf/flowexporter.h defines them, with the text parsing and validation every
 * writer goes through. Changing a layout means bumping `FE_MAPS_VERSION` on both sides.
 *
 * @example
 * ```ts
 * import { encodeIpKey, encodeWorkload, formatIp } from "./map_layout.ts";
 * const key = encodeIpKey("127.0.1.1"); // 00 … 00 ff ff 7f 00 01 01
 * const value = encodeWorkload("workload-a"); // 128 bytes, NUL padded
 * formatIp(key); // "::ffff:127.0.1.1"
 * ```
 *
 * @module
 */

/** Version of the map layouts; the pin directory carries it (`…/flowexporter/v1`). */
export const FE_MAPS_VERSION = 1;

/** Size of `struct fe_workload`: a workload ID of at most 127 bytes plus NUL padding. */
export const FE_WORKLOAD_ID_LEN = 128;

/** Size of `struct fe_ip_key`. */
export const IP_KEY_SIZE = 16;

/** Size of `struct fe_port_key`. */
export const PORT_KEY_SIZE = 8;

/** Directory the agent pins the identity maps in. */
export const MAPS_PIN_DIR = `/sys/fs/bpf/flowexporter/v${FE_MAPS_VERSION}`;

/** Name of the IP → workload map (pinned as `${MAPS_PIN_DIR}/ip_workload`). */
export const IP_WORKLOAD_MAP = "ip_workload";

/** Name of the (IPv4, port) → workload map (pinned as `${MAPS_PIN_DIR}/port_workload`). */
export const PORT_WORKLOAD_MAP = "port_workload";

/** Capacity of `ip_workload` (its `max_entries` in bpf/flowexporter.bpf.c). */
export const IP_WORKLOAD_MAX_ENTRIES = 65536;

/** Capacity of `port_workload` (its `max_entries` in bpf/flowexporter.bpf.c). */
export const PORT_WORKLOAD_MAX_ENTRIES = 262144;

/** Invalid input for a map layout (address, port, workload ID) or bytes that do not fit it. */
export class MapLayoutError extends Error {
  /** Creates the error; `message` is a complete sentence-case message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MapLayoutError";
  }
}

const MAX_ID_BYTES = FE_WORKLOAD_ID_LEN - 1;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Checks that `id` can be stored as a workload ID: non-empty, well-formed Unicode, no control
 * characters (C0, DEL, C1; so no NUL), no leading or trailing whitespace, and at most 127 bytes
 * of UTF-8. Never truncates.
 *
 * @throws {MapLayoutError} naming the first problem found.
 */
export function validateWorkloadId(id: string): void {
  if (id.length === 0) throw new MapLayoutError(`Invalid workload ID "": it is empty`);
  if (!id.isWellFormed()) {
    throw new MapLayoutError(
      `Invalid workload ID ${shown(id)}: it contains an unpaired UTF-16 surrogate`,
    );
  }
  const control = findControl(id);
  if (control >= 0) {
    const code = id.charCodeAt(control).toString(16).toUpperCase().padStart(4, "0");
    throw new MapLayoutError(
      `Invalid workload ID ${
        shown(id)
      }: it contains the control character U+${code} at index ${control}`,
    );
  }
  if (id.trim() !== id) {
    throw new MapLayoutError(
      `Invalid workload ID ${shown(id)}: it has leading or trailing whitespace`,
    );
  }
  const bytes = utf8.encode(id).length;
  if (bytes > MAX_ID_BYTES) {
    throw new MapLayoutError(
      `Workload ID is ${bytes} bytes; the maximum is ${MAX_ID_BYTES} (FE_WORKLOAD_ID_LEN - 1)`,
    );
  }
}

/**
 * Encodes a workload ID as `struct fe_workload`: UTF-8, NUL padded to 128 bytes.
 *
 * @throws {MapLayoutError} when `validateWorkloadId` refuses the ID.
 */
export function encodeWorkload(id: string): Uint8Array {
  validateWorkloadId(id);
  const value = new Uint8Array(FE_WORKLOAD_ID_LEN);
  utf8.encodeInto(id, value);
  return value;
}

/**
 * Decodes `struct fe_workload`: the UTF-8 text before the first NUL (bytes after it are ignored,
 * as the BPF side ignores them).
 *
 * @throws {MapLayoutError} when the value is not 128 bytes, has no NUL, or is not UTF-8.
 */
export function decodeWorkload(value: Uint8Array): string {
  checkSize("workload value", value, FE_WORKLOAD_ID_LEN);
  const end = value.indexOf(0);
  if (end < 0) {
    throw new MapLayoutError(
      `Cannot decode workload value: no NUL terminator in ${FE_WORKLOAD_ID_LEN} bytes`,
    );
  }
  try {
    return strictUtf8.decode(value.subarray(0, end));
  } catch (cause) {
    throw new MapLayoutError("Cannot decode workload value: the ID is not valid UTF-8", { cause });
  }
}

/**
 * Parses IPv4 dotted-quad or IPv6 text (including `::ffff:a.b.c.d` forms) into network-order
 * bytes: 4 bytes for IPv4 text, 16 bytes for IPv6 text. IPv4 parts must be plain decimal without
 * leading zeros; zone IDs (`%eth0`) and brackets are refused.
 *
 * @throws {MapLayoutError} e.g. `Invalid IP address "300.1.1.1": 300 is above 255`.
 */
export function parseIp(text: string): Uint8Array {
  const problem = text.includes(":") ? parseIpv6(text) : parseIpv4(text);
  if (typeof problem === "string") {
    throw new MapLayoutError(`Invalid IP address ${JSON.stringify(text)}: ${problem}`);
  }
  return problem;
}

/**
 * Formats a 4- or 16-byte network-order address as text: dotted quad for IPv4, RFC 5952 for
 * IPv6 (lower case, longest run of two or more zero groups as `::`, IPv4-mapped as
 * `::ffff:a.b.c.d`).
 *
 * @throws {RangeError} when `bytes` is neither 4 nor 16 bytes long.
 */
export function formatIp(bytes: Uint8Array): string {
  // A template, not `join`: the JSON output formats two addresses per flow.
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length !== 16) {
    throw new RangeError(`Cannot format IP address: ${bytes.length} bytes (expected 4 or 16)`);
  }
  if (isV4Mapped(bytes)) return `::ffff:${bytes.subarray(12).join(".")}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  let bestStart = -1;
  let bestLength = 1; // RFC 5952 4.2.2: a single zero group is not compressed
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = (part: number[]) => part.map((g) => g.toString(16)).join(":");
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

/**
 * Encodes `struct fe_ip_key`: 16 bytes, IPv4 as `::ffff:a.b.c.d`.
 *
 * @param ip address text or 4/16 network-order bytes.
 * @throws {MapLayoutError} for invalid text or the unspecified address (it never matches a socket).
 */
export function encodeIpKey(ip: string | Uint8Array): Uint8Array {
  const bytes = toBytes(ip);
  if (bytes.every((b) => b === 0) || (bytes.length === 16 && isV4Mapped(bytes) && isZero4(bytes))) {
    throw new MapLayoutError(
      `Invalid IP address ${
        JSON.stringify(describe(ip))
      }: the unspecified address is never a socket's local address`,
    );
  }
  if (bytes.length === 16) return bytes.slice();
  const key = new Uint8Array(IP_KEY_SIZE);
  key[10] = 0xff;
  key[11] = 0xff;
  key.set(bytes, 12);
  return key;
}

/**
 * Decodes `struct fe_ip_key` into an address: 4 bytes for `::ffff:a.b.c.d`, else 16 bytes.
 *
 * @throws {MapLayoutError} when the key is not 16 bytes.
 */
export function decodeIpKey(key: Uint8Array): Uint8Array {
  checkSize("IP key", key, IP_KEY_SIZE);
  return isV4Mapped(key) ? key.slice(12) : key.slice();
}

/**
 * Parses port text: plain decimal, 1 to 65535.
 *
 * @throws {MapLayoutError} e.g. `Invalid port "0": use an integer from 1 to 65535`.
 */
export function parsePort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw portError(JSON.stringify(text));
  return checkPort(Number(text), JSON.stringify(text));
}

/**
 * Encodes `struct fe_port_key`: IPv4 (network order), port big endian, two zero bytes.
 *
 * @param ipv4 IPv4 text or bytes; `::ffff:a.b.c.d` is accepted as its IPv4 address.
 * @param port 1 to 65535.
 * @throws {MapLayoutError} for an IPv6 address, the unspecified address or a bad port.
 */
export function encodePortKey(ipv4: string | Uint8Array, port: number): Uint8Array {
  let bytes = toBytes(ipv4);
  if (bytes.length === 16) {
    if (!isV4Mapped(bytes)) {
      throw new MapLayoutError(
        `Invalid IP address ${
          JSON.stringify(describe(ipv4))
        } for a port entry: ${PORT_WORKLOAD_MAP} holds IPv4 addresses only (use an IP entry for IPv6)`,
      );
    }
    bytes = bytes.subarray(12);
  }
  if (isZero4(bytes)) {
    throw new MapLayoutError(
      `Invalid IP address ${
        JSON.stringify(describe(ipv4))
      } for a port entry: the unspecified address is never a socket's local address`,
    );
  }
  checkPort(port, String(port));
  const key = new Uint8Array(PORT_KEY_SIZE);
  key.set(bytes, 0);
  key[4] = port >> 8;
  key[5] = port & 0xff;
  return key;
}

/**
 * Decodes `struct fe_port_key`.
 *
 * @throws {MapLayoutError} when the key is not 8 bytes or its padding is not zero (the BPF lookup
 * zeroes the padding, so such a key never matches).
 */
export function decodePortKey(key: Uint8Array): { ip: Uint8Array; port: number } {
  checkSize("port key", key, PORT_KEY_SIZE);
  if (key[6] !== 0 || key[7] !== 0) {
    throw new MapLayoutError(
      "Cannot decode port key: its padding bytes are not zero, so the BPF lookup never matches it",
    );
  }
  return { ip: key.slice(0, 4), port: (key[4] << 8) | key[5] };
}

/** The ID quoted for a message, cut at 64 characters so that a huge input stays readable. */
function shown(id: string): string {
  return id.length <= 64 ? JSON.stringify(id) : `${JSON.stringify(id.slice(0, 64))}…`;
}

/** Index of the first C0, DEL or C1 control character, or -1. */
function findControl(text: string): number {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return i;
  }
  return -1;
}

function toBytes(ip: string | Uint8Array): Uint8Array {
  if (typeof ip === "string") return parseIp(ip);
  if (ip.length !== 4 && ip.length !== 16) {
    throw new MapLayoutError(`Invalid IP address: ${ip.length} bytes (expected 4 or 16)`);
  }
  return ip;
}

function describe(ip: string | Uint8Array): string {
  return typeof ip === "string" ? ip : formatIp(ip);
}

function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

function isZero4(bytes: Uint8Array): boolean {
  const at = bytes.length - 4;
  return (bytes[at] | bytes[at + 1] | bytes[at + 2] | bytes[at + 3]) === 0;
}

function checkSize(what: string, bytes: Uint8Array, size: number): void {
  if (bytes.length !== size) {
    throw new MapLayoutError(`Cannot decode ${what}: ${bytes.length} bytes (expected ${size})`);
  }
}

function portError(shown: string): MapLayoutError {
  return new MapLayoutError(`Invalid port ${shown}: use an integer from 1 to 65535`);
}

function checkPort(port: number, shown: string): number {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw portError(shown);
  return port;
}

/** Returns the 4 bytes, or a reason the text is not an IPv4 address. */
function parseIpv4(text: string): Uint8Array | string {
  const parts = text.split(".");
  if (parts.length !== 4) return "expected four decimal parts a.b.c.d or IPv6 text";
  const bytes = new Uint8Array(4);
  for (const [i, part] of parts.entries()) {
    if (!/^[0-9]{1,3}$/.test(part)) return `${JSON.stringify(part)} is not a decimal number`;
    if (part.length > 1 && part[0] === "0") {
      return `${part} has a leading zero (ambiguous: some parsers read it as octal)`;
    }
    const value = Number(part);
    if (value > 255) return `${part} is above 255`;
    bytes[i] = value;
  }
  return bytes;
}

/** Returns the 16 bytes, or a reason the text is not an IPv6 address. */
function parseIpv6(text: string): Uint8Array | string {
  if (text.includes("%")) return "zone IDs (%…) are not supported";
  if (text.startsWith("[")) return "remove the brackets";
  const halves = text.split("::");
  if (halves.length > 2) return `"::" appears more than once`;
  const head = parseGroups(halves[0], halves.length === 1);
  if (typeof head === "string") return head;
  const tail = halves.length === 2 ? parseGroups(halves[1], true) : [];
  if (typeof tail === "string") return tail;
  const count = head.length + tail.length;
  if (halves.length === 1 ? count !== 8 : count > 7) {
    return `it has ${count} 16-bit groups (expected 8, or fewer with "::")`;
  }
  const groups = [...head, ...new Array<number>(8 - count).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/** Parses colon-separated hex groups; the last may be dotted IPv4 when `ipv4Tail` allows it. */
function parseGroups(part: string, ipv4Tail: boolean): number[] | string {
  if (part === "") return [];
  const groups: number[] = [];
  const pieces = part.split(":");
  for (const [i, piece] of pieces.entries()) {
    if (ipv4Tail && i === pieces.length - 1 && piece.includes(".")) {
      const v4 = parseIpv4(piece);
      if (typeof v4 === "string") return `embedded IPv4 ${JSON.stringify(piece)}: ${v4}`;
      groups.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
    } else if (/^[0-9a-fA-F]{1,4}$/.test(piece)) {
      groups.push(parseInt(piece, 16));
    } else {
      return `${JSON.stringify(piece)} is not a 16-bit hex group`;
    }
  }
  return groups;
}

/**
 * One BPF map, by bytes. The agent implements it over the bpf() syscall (ffi/); tests use an
 * in-memory one.
 */
export interface BpfMap {
  /** Key size the map was created with, in bytes. */
  readonly keySize: number;
  /** Value size the map was created with, in bytes. */
  readonly valueSize: number;
  /** Capacity the map was created with. */
  readonly maxEntries: number;
  /** The value for `key`, or null when there is none. */
  lookup(key: Uint8Array): Uint8Array | null;
  /** Creates or replaces the entry for `key`; throws when the map is full. */
  update(key: Uint8Array, value: Uint8Array): void;
  /** Deletes the entry for `key`; false when there was none. */
  delete(key: Uint8Array): boolean;
  /** Every key, in the map's order. */
  keys(): Iterable<Uint8Array>;
  /** Number of entries; optional, for implementations that count faster than `keys()`. */
  count?(): number;
  /** Releases the map handle. Safe to call more than once. */
  close(): void;
}

/** The two identity maps `WorkloadMaps` works on. */
export interface IdentityMaps {
  ip: BpfMap;
  port: BpfMap;
}
