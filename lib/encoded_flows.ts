/**
 * Flows encoded for the wire (lib/wire.ts's flow encoding), back to back, with where each ends:
 * what one poll of the ring adds to the open window, and what the capture journal keeps of it.
 * Encoded once, they are copied into the window and written to the journal as they are.
 *
 * @module
 */

import { CborError, CborReader, MAJOR_MAP } from "./_cbor_reader.ts";
import { DecodeError, RECORD_SIZE } from "./decode.ts";
import type { RecordChunk } from "./fanout.ts";
import { type FlowWriter, RecordWriter } from "./wire.ts";

/** Flows' encodings back to back, and where each ends. */
export interface EncodedFlows {
  /** The encodings. */
  readonly bytes: Uint8Array;
  /** `ends[i]`: the offset in `bytes` just past flow `i`; one entry per flow. */
  readonly ends: Uint32Array;
}

/** A whole poll of the agent's (1024 records, ffi/flow_source.ts) at about 110 bytes a flow. */
const FIRST_BYTES = 128 * 1024;
const FIRST_FLOWS = 1024;

/**
 * The most memory a {@linkcode FlowBuffer} takes when it never holds more than `flows` flows of
 * at most `room` bytes each (`FlowWriter.room`), bytes: it doubles as it grows.
 */
export function flowBufferBound(flows: number, room: number): number {
  return Math.max(FIRST_BYTES, 2 * flows * room) +
    Uint32Array.BYTES_PER_ELEMENT * Math.max(FIRST_FLOWS, 2 * flows);
}

/**
 * A reused buffer of encoded flows: cleared, filled with one poll's flows, read, cleared again.
 * It grows to the largest poll and stays that size.
 *
 * @example
 * ```ts
 * import { FlowBuffer } from "./encoded_flows.ts";
 * import { flowWriterOf } from "./wire.ts";
 * declare const records: import("./flow.ts").FlowRecord[];
 * const buffer = new FlowBuffer();
 * for (const record of records) buffer.append(flowWriterOf(record));
 * const { bytes, ends } = buffer.flows; // valid until the next clear()
 * ```
 */
export class FlowBuffer {
  #bytes = new Uint8Array(FIRST_BYTES);
  #ends = new Uint32Array(FIRST_FLOWS);
  #used = 0;
  #count = 0;

  /** Empties the buffer; views from {@linkcode flows} are overwritten from now on. */
  clear(): void {
    this.#used = 0;
    this.#count = 0;
  }

  /**
   * Encodes a flow after the others.
   *
   * @throws {import("./wire.ts").WireFormatError} when the flow is invalid; the buffer is then as
   *   it was
   */
  append(flow: FlowWriter): void {
    this.#grow(flow.room, 1);
    const end = flow.write(this.#bytes, this.#used);
    this.#ends[this.#count++] = end;
    this.#used = end;
  }

  /**
   * Room for an encoder that writes in place (ffi/record_encoder.ts): the buffer grown, as
   * {@linkcode append} grows it, to hold `bytes` more bytes and `flows` more flows.
   *
   * @returns the buffer, the ends, and where the next flow and its end go; valid until the next
   *   call of a method
   */
  spare(bytes: number, flows: number): {
    bytes: Uint8Array;
    ends: Uint32Array;
    used: number;
    count: number;
  } {
    this.#grow(bytes, flows);
    return { bytes: this.#bytes, ends: this.#ends, used: this.#used, count: this.#count };
  }

  /**
   * Takes the `flows` flows an encoder wrote in place after {@linkcode spare}, their ends
   * included.
   */
  commit(flows: number): void {
    if (flows === 0) return;
    this.#count += flows;
    this.#used = this.#ends[this.#count - 1];
  }

  /** Whether `bytes` more bytes fit without growing. */
  fits(bytes: number): boolean {
    return this.#used + bytes <= this.#bytes.length;
  }

  #grow(bytes: number, flows: number): void {
    if (this.#used + bytes > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(2 * this.#bytes.length, this.#used + bytes));
      grown.set(this.#bytes.subarray(0, this.#used));
      this.#bytes = grown;
    }
    if (this.#count + flows > this.#ends.length) {
      const ends = new Uint32Array(Math.max(2 * this.#ends.length, this.#count + flows));
      ends.set(this.#ends.subarray(0, this.#count));
      this.#ends = ends;
    }
  }

  /** The flows appended since the last clear(): views of the buffer. */
  get flows(): EncodedFlows {
    return {
      bytes: this.#bytes.subarray(0, this.#used),
      ends: this.#ends.subarray(0, this.#count),
    };
  }
}

/**
 * Encodes a run of kernel records into `out` from offset `used`, byte for byte as
 * {@linkcode RecordWriter} does, each flow's end offset into `ends`: the shim's encoder
 * (ffi/record_encoder.ts). It stops before a record RecordWriter's direct path would not take,
 * or when fewer than `RECORD_ENCODING.room` bytes are left.
 *
 * @param records whole records, the run's first at 0
 * @param chunk the boot ID and clock offset they were captured with
 * @returns how many records it encoded
 */
export type RunEncoder = (
  records: Uint8Array,
  chunk: Pick<RecordChunk, "clockOffsetNs" | "bootId">,
  out: Uint8Array,
  used: number,
  ends: Uint32Array,
) => number;

/**
 * Encodes raw kernel records where they lie (no record object on the way) into `buffer`, which
 * is cleared first: how one poll's records enter the pipeline.
 *
 * @param dropInvalid takes the error of a record that cannot be encoded (it is left out), and
 *   returns false for an error it does not take, which is then thrown
 * @param encodeRun encodes the records it can in runs (the agent's, in the shim); each record it
 *   declines goes through {@linkcode RecordWriter}, so the outcome, errors included, is the same
 * @returns the flows, views of `buffer`
 * @throws {DecodeError} when the bytes are not whole records
 */
export function encodeRecords(
  buffer: FlowBuffer,
  chunk: RecordChunk,
  dropInvalid: (error: unknown) => boolean,
  encodeRun?: RunEncoder,
): EncodedFlows {
  const bytes = chunk.records;
  if (bytes.length % RECORD_SIZE !== 0) {
    throw new DecodeError(
      `Cannot take ${bytes.length} bytes of flow records: not a multiple of ${RECORD_SIZE}`,
    );
  }
  const writer = new RecordWriter(bytes, chunk.clockOffsetNs, chunk.bootId);
  buffer.clear();
  let at = 0;
  while (at < bytes.length) {
    if (encodeRun !== undefined) {
      const spare = buffer.spare(writer.room, (bytes.length - at) / RECORD_SIZE);
      const taken = encodeRun(
        bytes.subarray(at),
        chunk,
        spare.bytes,
        spare.used,
        spare.ends.subarray(spare.count),
      );
      buffer.commit(taken);
      at += taken * RECORD_SIZE;
      // Stopped short of room: the next spare() grows the buffer.
      if (at === bytes.length || !buffer.fits(writer.room)) continue;
    }
    writer.at = at;
    try {
      buffer.append(writer);
    } catch (error) {
      if (!dropInvalid(error)) throw error;
    }
    at += RECORD_SIZE;
  }
  return buffer.flows;
}

/**
 * Finds where each flow of `bytes` (encodings back to back, as a journal holds them) ends, by
 * reading them.
 *
 * @returns the flows, or undefined when the bytes are not a sequence of whole CBOR maps
 */
export function splitFlows(bytes: Uint8Array): EncodedFlows | undefined {
  const reader = new CborReader(bytes);
  const ends: number[] = [];
  try {
    while (reader.left > 0) {
      if (reader.peekMajor() !== MAJOR_MAP) return undefined;
      reader.skip();
      ends.push(reader.at);
    }
  } catch (error) {
    if (error instanceof CborError) return undefined;
    throw error;
  }
  return { bytes, ends: Uint32Array.from(ends) };
}
