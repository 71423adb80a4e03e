/**
 * A bounded CBOR (RFC 8949) reader for the batch decoder: reads data items from a byte array one
 * at a time, and refuses any declared length that the bytes left cannot hold before it allocates
 * anything. Its memory and time are therefore bounded by the bytes it was given: an array head
 * that declares 100 million entries in a 25-byte body is refused at once, and skipping an item
 * walks its bytes without building it.
 *
 * It reads what `schema/flow_batch.cddl` allows and a little more (integers in any width, floats,
 * null and undefined, so that the decoder can name a wrong value), and refuses the rest as
 * invalid: tags, indefinite lengths, other simple values, text that is not UTF-8.
 *
 * @module
 */

/** Major types, as {@linkcode CborReader.peekMajor} returns them. */
export const MAJOR_UINT = 0;
/** Negative integer. */
export const MAJOR_NINT = 1;
/** Byte string. */
export const MAJOR_BYTES = 2;
/** Text string. */
export const MAJOR_TEXT = 3;
/** Array. */
export const MAJOR_ARRAY = 4;
/** Map. */
export const MAJOR_MAP = 5;
/** Tag. */
export const MAJOR_TAG = 6;
/** Simple values and floats. */
export const MAJOR_SIMPLE = 7;

/**
 * The bytes are not the CBOR this reader accepts. `incomplete` is true when they end inside a
 * data item, or declare a length longer than what follows.
 */
export class CborError extends Error {
  /** The bytes end early (truncated, or a declared length runs past the end). */
  readonly incomplete: boolean;

  /**
   * @param message what is wrong, with its byte offset, e.g. `tag 64 at byte 17`
   * @param incomplete true when the bytes end inside a data item
   */
  constructor(message: string, incomplete = false) {
    super(message);
    this.name = "CborError";
    this.incomplete = incomplete;
  }
}

/**
 * Stands for an array or a map that {@linkcode CborReader.value} skipped where a single value
 * was expected: the caller can name it in a message without it ever being built.
 */
export class SkippedItem {
  /** `array` or `map`. */
  readonly kind: "array" | "map";

  private constructor(kind: "array" | "map") {
    this.kind = kind;
  }

  /** The one instance for arrays. */
  static readonly ARRAY: SkippedItem = new SkippedItem("array");
  /** The one instance for maps. */
  static readonly MAP: SkippedItem = new SkippedItem("map");
}

const TWO_32 = 0x1_0000_0000;
const TWO_21 = 0x20_0000; // high word limit of a safe integer
const NAMES = ["", "", "byte string", "text string", "array", "map"];
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Reads data items from a byte array, from a position it advances. */
export class CborReader {
  /** The bytes. */
  readonly bytes: Uint8Array;
  /** Where the next data item starts. */
  at = 0;
  readonly #view: DataView;
  /** The argument of the last head read; exact below 2^53, approximate above. */
  #arg = 0;
  /** True when the last head's argument is 2^53 or more: #argBig holds it exactly. */
  #wide = false;
  #argBig = 0n;

  /**
   * @param bytes the CBOR to read
   */
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Bytes left after the position. */
  get left(): number {
    return this.bytes.length - this.at;
  }

  /**
   * The major type of the next data item, without reading it.
   *
   * @throws {CborError} at the end of the bytes
   */
  peekMajor(): number {
    if (this.at >= this.bytes.length) throw this.#truncated();
    return this.bytes[this.at] >> 5;
  }

  /**
   * Reads an array head.
   *
   * @returns the number of entries, at most the bytes left (each takes one at least)
   * @throws {CborError} when the next item is not an array, or declares more entries than fit
   */
  arrayLength(): number {
    const start = this.at;
    const major = this.#head();
    if (major !== MAJOR_ARRAY) throw new CborError(`expected an array at byte ${start}`);
    this.#checkLength(MAJOR_ARRAY, start, this.#arg);
    return this.#arg;
  }

  /**
   * Reads a map head.
   *
   * @returns the number of entries, at most half the bytes left (each takes two at least)
   * @throws {CborError} when the next item is not a map, or declares more entries than fit
   */
  mapLength(): number {
    const start = this.at;
    const major = this.#head();
    if (major !== MAJOR_MAP) throw new CborError(`expected a map at byte ${start}`);
    this.#checkLength(MAJOR_MAP, start, this.#arg);
    return this.#arg;
  }

  /**
   * Reads one data item as a single value: an integer (a number when it is a safe integer, else
   * a bigint), a float, a byte string (a view into the bytes, not a copy), a text string, a
   * boolean, null or undefined. An array or a map is skipped whole and returned as
   * {@linkcode SkippedItem}.
   *
   * @throws {CborError} when the item is truncated or not accepted (tag, indefinite length…)
   */
  value(): unknown {
    const b = this.bytes;
    const at = this.at;
    if (at < b.length && b[at] < 24) { // the common case: a small unsigned integer
      this.at = at + 1;
      return b[at];
    }
    const major = this.#head();
    switch (major) {
      case MAJOR_UINT:
        return this.#integer(false);
      case MAJOR_NINT:
        return this.#integer(true);
      case MAJOR_BYTES: {
        this.#checkLength(MAJOR_BYTES, at, this.#arg);
        const start = this.at;
        this.at = start + this.#arg;
        return b.subarray(start, this.at);
      }
      case MAJOR_TEXT:
        this.#checkLength(MAJOR_TEXT, at, this.#arg);
        return this.#text(at, this.#arg);
      case MAJOR_ARRAY:
      case MAJOR_MAP:
        this.at = at;
        this.skip();
        return major === MAJOR_ARRAY ? SkippedItem.ARRAY : SkippedItem.MAP;
      default:
        return this.#simple(at);
    }
  }

  /**
   * Skips one data item, arrays and maps with everything in them, without building it: time in
   * proportion to its bytes, no allocation, no recursion.
   *
   * @throws {CborError} as {@linkcode value} would
   */
  skip(): void {
    this.skipItems(1);
  }

  /**
   * Skips `count` data items (see {@linkcode skip}).
   *
   * @param count items to skip; at most the bytes left
   */
  skipItems(count: number): void {
    const b = this.bytes;
    const end = b.length;
    let at = this.at;
    // Items still to skip; never more than the bytes left, as each takes one byte at least.
    let pending = count;
    while (pending > 0) {
      if (at >= end) throw this.#truncated();
      pending--;
      const initial = b[at];
      const major = initial >> 5;
      const info = initial & 0x1f;
      if (info < 24 && major < MAJOR_TAG) { // the argument is in the first byte: most items
        at++;
        if (major === MAJOR_ARRAY) pending += info;
        else if (major === MAJOR_MAP) pending += 2 * info;
        else if (major === MAJOR_BYTES || major === MAJOR_TEXT) at += info;
      } else {
        this.at = at;
        const headMajor = this.#head();
        if (headMajor === MAJOR_SIMPLE) this.#simple(at);
        else if (headMajor !== MAJOR_UINT && headMajor !== MAJOR_NINT) {
          this.#checkLength(headMajor, at, this.#arg);
          if (headMajor === MAJOR_ARRAY) pending += this.#arg;
          else if (headMajor === MAJOR_MAP) pending += 2 * this.#arg;
          else this.at += this.#arg;
        }
        at = this.at;
      }
      if (pending > end - at) {
        this.at = Math.min(at, end);
        throw this.#truncated();
      }
    }
    this.at = at;
  }

  /**
   * Checks that the bytes end here: one data item, nothing after it.
   *
   * @throws {CborError} naming the bytes left over
   */
  end(): void {
    if (this.at !== this.bytes.length) {
      throw new CborError(`data after the end of the item at byte ${this.at}: ${this.left} bytes`);
    }
  }

  /** Reads a head: returns the major type; the argument goes to #arg (and #argBig). */
  #head(): number {
    const b = this.bytes;
    const at = this.at;
    if (at >= b.length) throw this.#truncated();
    const initial = b[at];
    const major = initial >> 5;
    const info = initial & 0x1f;
    this.#wide = false;
    if (major === MAJOR_SIMPLE) {
      // Floats take their bytes here; their argument is read by #simple.
      const size = info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : info === 24 ? 1 : 0;
      if (at + 1 + size > b.length) throw this.#truncated();
      this.at = at + 1 + size;
      this.#arg = info;
      return major;
    }
    if (major === MAJOR_TAG) {
      throw new CborError(`tag at byte ${at}: batches use no tags`);
    }
    if (info < 24) {
      this.#arg = info;
      this.at = at + 1;
    } else if (info === 24) {
      if (at + 2 > b.length) throw this.#truncated();
      this.#arg = b[at + 1];
      this.at = at + 2;
    } else if (info === 25) {
      if (at + 3 > b.length) throw this.#truncated();
      this.#arg = this.#view.getUint16(at + 1);
      this.at = at + 3;
    } else if (info === 26) {
      if (at + 5 > b.length) throw this.#truncated();
      this.#arg = this.#view.getUint32(at + 1);
      this.at = at + 5;
    } else if (info === 27) {
      if (at + 9 > b.length) throw this.#truncated();
      const high = this.#view.getUint32(at + 1);
      const low = this.#view.getUint32(at + 5);
      this.#arg = high * TWO_32 + low;
      if (high >= TWO_21) {
        this.#wide = true;
        this.#argBig = this.#view.getBigUint64(at + 1);
      }
      this.at = at + 9;
    } else if (info === 31) {
      throw new CborError(
        `indefinite-length ${
          NAMES[major] || "integer"
        } at byte ${at}: batches use definite lengths`,
      );
    } else {
      throw new CborError(`reserved head 0x${initial.toString(16)} at byte ${at}`);
    }
    return major;
  }

  #integer(negative: boolean): number | bigint {
    if (this.#wide) return negative ? -1n - this.#argBig : this.#argBig;
    const n = this.#arg; // below 2^53: exact
    if (!negative) return n;
    return n < Number.MAX_SAFE_INTEGER ? -1 - n : -1n - BigInt(n);
  }

  #simple(at: number): unknown {
    const info = this.#arg;
    switch (info) {
      case 20:
        return false;
      case 21:
        return true;
      case 22:
        return null;
      case 23:
        return undefined;
      case 25:
        return half(this.#view.getUint16(at + 1));
      case 26:
        return this.#view.getFloat32(at + 1);
      case 27:
        return this.#view.getFloat64(at + 1);
      case 31:
        throw new CborError(`break at byte ${at} outside an indefinite-length item`);
      case 24:
        throw new CborError(`simple value ${this.bytes[at + 1]} at byte ${at}`);
      default:
        throw new CborError(
          info < 24
            ? `simple value ${info} at byte ${at}`
            : `reserved head 0xf${(info & 0xf).toString(16)} at byte ${at}`,
        );
    }
  }

  #text(start: number, length: number): string {
    const b = this.bytes;
    const from = this.at;
    const to = from + length;
    this.at = to;
    if (length <= 64) {
      let ascii = true;
      for (let i = from; i < to; i++) {
        if (b[i] >= 0x80) {
          ascii = false;
          break;
        }
      }
      if (ascii) {
        return String.fromCharCode.apply(null, b.subarray(from, to) as unknown as number[]);
      }
    }
    try {
      return utf8.decode(b.subarray(from, to));
    } catch {
      throw new CborError(`text string at byte ${start} is not valid UTF-8`);
    }
  }

  /** Refuses a declared length the bytes left cannot hold. */
  #checkLength(major: number, start: number, n: number): void {
    const left = this.left;
    const fits = major === MAJOR_MAP ? n <= left / 2 : n <= left;
    if (!fits) {
      const unit = major === MAJOR_MAP || major === MAJOR_ARRAY ? "entries" : "bytes";
      throw new CborError(
        `the ${NAMES[major]} at byte ${start} declares ${n} ${unit}, but ${left} bytes follow`,
        true,
      );
    }
  }

  #truncated(): CborError {
    return new CborError(`${this.bytes.length} bytes end inside a data item`, true);
  }
}

/** An IEEE 754 half-precision float. */
function half(bits: number): number {
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  const sign = bits & 0x8000 ? -1 : 1;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}
