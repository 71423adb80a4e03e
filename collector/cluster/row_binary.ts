/**
 * A writer of ClickHouse's RowBinary format (the column values of each row one after the other,
 * little-endian integers, strings as a LEB128 length and their UTF-8 bytes, Nullable as a
 * null byte before the value), which ClickHouse has read unchanged from 18.16 to current
 * releases. Rows written once, at ingest, go to ClickHouse as they are: the sink neither
 * decodes batches nor formats text.
 *
 * @example
 * ```ts
 * import { RowBinaryWriter } from "./row_binary.ts";
 * const w = new RowBinaryWriter();
 * w.string("node-a");
 * w.uint64(7n);
 * const bytes = w.bytes(); // 15 bytes
 * ```
 *
 * @module
 */

const text = new TextEncoder();

/** Appends RowBinary values to a growing buffer. */
export class RowBinaryWriter {
  #buffer: Uint8Array;
  #view: DataView;
  #at = 0;

  /** Creates an empty writer; `capacity` is the first buffer's size in bytes. */
  constructor(capacity = 4096) {
    this.#buffer = new Uint8Array(capacity);
    this.#view = new DataView(this.#buffer.buffer);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.#at;
  }

  /** The bytes written so far (a view, valid until the next write). */
  bytes(): Uint8Array {
    return this.#buffer.subarray(0, this.#at);
  }

  /** Appends raw bytes (rows written by another writer). */
  raw(bytes: Uint8Array): void {
    this.#room(bytes.length);
    this.#buffer.set(bytes, this.#at);
    this.#at += bytes.length;
  }

  /** A `UInt8`. */
  uint8(value: number): void {
    this.#room(1);
    this.#buffer[this.#at++] = value;
  }

  /** A `UInt16`. */
  uint16(value: number): void {
    this.#room(2);
    this.#view.setUint16(this.#at, value, true);
    this.#at += 2;
  }

  /** A `UInt32` or, for a negative value, an `Int32`. */
  int32(value: number): void {
    this.#room(4);
    this.#view.setInt32(this.#at, value, true);
    this.#at += 4;
  }

  /** A `UInt64` from a safe integer. */
  uint64(value: number | bigint): void {
    this.#room(8);
    if (typeof value === "bigint") {
      this.#view.setBigUint64(this.#at, value, true);
    } else {
      this.#view.setUint32(this.#at, value >>> 0, true);
      this.#view.setUint32(this.#at + 4, Math.floor(value / 0x1_0000_0000), true);
    }
    this.#at += 8;
  }

  /** An `Int64`. */
  int64(value: bigint): void {
    this.#room(8);
    this.#view.setBigInt64(this.#at, value, true);
    this.#at += 8;
  }

  /** A `String`. */
  string(value: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit; the length prefix at most 5 bytes.
    this.#room(value.length * 3 + 5);
    const buffer = this.#buffer;
    const lengthAt = this.#at;
    // Short ASCII strings (most: names, addresses, states) are copied unit by unit, which is
    // faster than encodeInto() on a new view for each.
    if (value.length < 0x80) {
      let i = 0;
      for (; i < value.length; i++) {
        const unit = value.charCodeAt(i);
        if (unit >= 0x80) break;
        buffer[lengthAt + 1 + i] = unit;
      }
      if (i === value.length) {
        buffer[lengthAt] = i;
        this.#at = lengthAt + 1 + i;
        return;
      }
    }
    // Strings under 128 bytes take one length byte: write there, move if longer.
    const { written } = text.encodeInto(value, buffer.subarray(lengthAt + 1));
    if (written < 0x80) {
      buffer[lengthAt] = written;
      this.#at = lengthAt + 1 + written;
      return;
    }
    const prefix: number[] = [];
    for (let n = written; n > 0 || prefix.length === 0; n = Math.floor(n / 0x80)) {
      prefix.push(n >= 0x80 ? (n & 0x7f) | 0x80 : n);
    }
    buffer.copyWithin(lengthAt + prefix.length, lengthAt + 1, lengthAt + 1 + written);
    buffer.set(prefix, lengthAt);
    this.#at = lengthAt + prefix.length + written;
  }

  /** A `Nullable(String)`. */
  nullableString(value: string | null | undefined): void {
    if (value === null || value === undefined) {
      this.uint8(1);
    } else {
      this.uint8(0);
      this.string(value);
    }
  }

  /** A `Nullable(UInt64)`. */
  nullableUint64(value: number | null): void {
    if (value === null) {
      this.uint8(1);
    } else {
      this.uint8(0);
      this.uint64(value);
    }
  }

  #room(n: number): void {
    if (this.#at + n <= this.#buffer.length) return;
    const bigger = new Uint8Array(Math.max(this.#buffer.length * 2, this.#at + n));
    bigger.set(this.#buffer.subarray(0, this.#at));
    this.#buffer = bigger;
    this.#view = new DataView(bigger.buffer);
  }
}
