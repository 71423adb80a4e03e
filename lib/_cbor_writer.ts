/**
 * A minimal CBOR (RFC 8949) writer for fixed record shapes: writes data items straight into a
 * byte array the caller owns, byte for byte as cbor-x writes the same values with the options
 * of `wire.ts` (shortest heads, 8-byte integers above 2^32 - 1, no tags).
 *
 * The caller makes room first: no method checks bounds, and a write past the end of the target
 * is lost silently. {@linkcode textRoom} and the sizes in each method's doc give the worst case.
 *
 * @module
 */

const TWO_32 = 0x1_0000_0000;
const UINT32_MAX_N = 0xffff_ffffn;
const INT32_MAX_N = 0x7fff_ffffn;
const MAJOR_BYTES = 0x40;
const MAJOR_TEXT = 0x60;

const utf8 = new TextEncoder();

/** Most bytes {@linkcode CborWriter.text} writes for a string of `length` UTF-16 code units. */
export function textRoom(length: number): number {
  return 5 + 3 * length;
}

/** Writes data items one after another into a byte array, from a position it advances. */
export class CborWriter {
  /** The target. */
  bytes: Uint8Array = new Uint8Array(0);
  /** Where the next data item goes. */
  at = 0;
  #view = new DataView(this.bytes.buffer);

  /**
   * Points the writer at `bytes`, position `at`.
   *
   * @param bytes the target; its view is kept while the target stays the same
   * @param at the position of the next data item
   */
  reset(bytes: Uint8Array, at: number): void {
    if (bytes !== this.bytes) {
      this.bytes = bytes;
      this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    this.at = at;
  }

  /**
   * The head of a data item, shortest form: 1 to 5 bytes.
   *
   * @param major the major type shifted into place, e.g. 0xa0 for a map
   * @param n the argument, an integer from 0 to 2^32 - 1
   */
  head(major: number, n: number): void {
    const b = this.bytes;
    const at = this.at;
    if (n < 24) {
      b[at] = major | n;
      this.at = at + 1;
    } else if (n < 0x100) {
      b[at] = major | 24;
      b[at + 1] = n;
      this.at = at + 2;
    } else if (n < 0x10000) {
      b[at] = major | 25;
      b[at + 1] = n >> 8;
      b[at + 2] = n;
      this.at = at + 3;
    } else {
      b[at] = major | 26;
      this.#view.setUint32(at + 1, n);
      this.at = at + 5;
    }
  }

  /** An unsigned integer from 0 to 23 (a map key, an enumeration code): 1 byte. */
  tiny(n: number): void {
    this.bytes[this.at++] = n;
  }

  /**
   * An unsigned integer from 0 to 2^53 - 1: shortest form up to 2^32 - 1, the 8-byte form
   * above (as cbor-x writes it once handed over as a bigint). 1 to 9 bytes.
   */
  uint(n: number): void {
    if (n < TWO_32) return this.head(0, n);
    const at = this.at;
    this.bytes[at] = 0x1b;
    this.#view.setUint32(at + 1, Math.floor(n / TWO_32));
    this.#view.setUint32(at + 5, n >>> 0);
    this.at = at + 9;
  }

  /**
   * An unsigned integer from 0 to 2^64 - 1 given as a bigint: shortest form up to 2^32 - 1,
   * the 8-byte form above. 1 to 9 bytes.
   */
  uint64(n: bigint): void {
    if (n <= UINT32_MAX_N) return this.head(0, Number(n));
    const at = this.at;
    this.bytes[at] = 0x1b;
    this.#view.setBigUint64(at + 1, n);
    this.at = at + 9;
  }

  /**
   * A signed integer from -2^64 to 2^64 - 1 given as a bigint: as {@linkcode uint64} when not
   * negative; a negative one in its shortest form down to -2^31, the 8-byte form below (as
   * cbor-x writes a bigint). 1 to 9 bytes.
   */
  int64(n: bigint): void {
    if (n >= 0n) return this.uint64(n);
    const magnitude = -1n - n;
    if (magnitude <= INT32_MAX_N) return this.head(0x20, Number(magnitude));
    const at = this.at;
    this.bytes[at] = 0x3b;
    this.#view.setBigUint64(at + 1, magnitude);
    this.at = at + 9;
  }

  /** A byte string: its length plus 1 to 5 bytes. */
  byteString(value: Uint8Array): void {
    this.head(MAJOR_BYTES, value.length);
    this.#raw(value);
  }

  /**
   * A byte string of `prefix`, then `n` as 8 bytes, big-endian (a flow ID: boot ID and socket
   * cookie): its length, `prefix.length + 8`, plus 1 to 5 bytes.
   *
   * @param prefix the leading bytes
   * @param n an unsigned integer from 0 to 2^64 - 1
   */
  bytesThenUint64(prefix: Uint8Array, n: bigint): void {
    this.head(MAJOR_BYTES, prefix.length + 8);
    this.#raw(prefix);
    this.#view.setBigUint64(this.at, n);
    this.at += 8;
  }

  /**
   * An unsigned integer given as its two 32-bit halves: shortest form when `hi` is 0, the
   * 8-byte form otherwise (as {@linkcode uint64}). 1 to 9 bytes.
   */
  uint64Halves(hi: number, lo: number): void {
    if (hi === 0) return this.head(0, lo);
    const at = this.at;
    this.bytes[at] = 0x1b;
    this.#view.setUint32(at + 1, hi);
    this.#view.setUint32(at + 5, lo);
    this.at = at + 9;
  }

  /** A byte string of `length` bytes copied from `source` at `start`: its length plus 1 to 5. */
  byteStringOf(source: Uint8Array, start: number, length: number): void {
    this.head(MAJOR_BYTES, length);
    this.#copy(source, start, length);
  }

  /**
   * A text string of `length` ASCII bytes copied from `source` at `start` (the caller checked
   * that each is below 0x80, so the bytes are their own UTF-8): its length plus 1 to 5.
   */
  asciiTextOf(source: Uint8Array, start: number, length: number): void {
    this.head(MAJOR_TEXT, length);
    this.#copy(source, start, length);
  }

  /**
   * A byte string: `prefix`, then the 8 bytes at `start` of `source` in reverse order (a
   * little-endian uint64 written big-endian, as {@linkcode bytesThenUint64} writes a bigint).
   */
  bytesThenReversed8(prefix: Uint8Array, source: Uint8Array, start: number): void {
    this.head(MAJOR_BYTES, prefix.length + 8);
    this.#raw(prefix);
    const b = this.bytes;
    const at = this.at;
    for (let i = 0; i < 8; i++) b[at + i] = source[start + 7 - i];
    this.at = at + 8;
  }

  /** A text string, UTF-8 (a lone surrogate becomes U+FFFD): at most {@linkcode textRoom}. */
  text(value: string): void {
    const n = value.length;
    const start = this.at;
    this.head(MAJOR_TEXT, n);
    const b = this.bytes;
    const at = this.at;
    for (let i = 0; i < n; i++) {
      const c = value.charCodeAt(i);
      if (c >= 0x80) return this.#utf8(value, start);
      b[at + i] = c;
    }
    this.at = at + n;
  }

  /** `true` or `false`: 1 byte. */
  bool(value: boolean): void {
    this.bytes[this.at++] = value ? 0xf5 : 0xf4;
  }

  #copy(source: Uint8Array, start: number, length: number): void {
    const b = this.bytes;
    const at = this.at;
    if (length > 16) b.set(source.subarray(start, start + length), at);
    else for (let i = 0; i < length; i++) b[at + i] = source[start + i];
    this.at = at + length;
  }

  /** Copies `value` as it is, the content of a byte string. */
  #raw(value: Uint8Array): void {
    const n = value.length;
    const b = this.bytes;
    const at = this.at;
    if (n > 16) b.set(value, at);
    else for (let i = 0; i < n; i++) b[at + i] = value[i]; // faster than `set` for addresses
    this.at = at + n;
  }

  /** Writes a text string that is not all ASCII at `start`, where its head goes. */
  #utf8(value: string, start: number): void {
    const room = 3 * value.length;
    const reserved = room < 24 ? 1 : room < 0x100 ? 2 : room < 0x10000 ? 3 : 5;
    const from = start + reserved;
    const { written } = utf8.encodeInto(value, this.bytes.subarray(from, from + room));
    this.at = start;
    this.head(MAJOR_TEXT, written);
    if (this.at !== from) this.bytes.copyWithin(this.at, from, from + written);
    this.at += written;
  }
}
