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
    const room = flow.room;
    if (this.#used + room > this.#bytes.length) {
      const bytes = new Uint8Array(Math.max(2 * this.#bytes.length, this.#used + room));
      bytes.set(this.#bytes.subarray(0, this.#used));
      this.#bytes = bytes;
    }
    const end = flow.write(this.#bytes, this.#used);
    if (this.#count === this.#ends.length) {
      const ends = new Uint32Array(2 * this.#ends.length);
      ends.set(this.#ends);
      this.#ends = ends;
    }
    this.#ends[this.#count++] = end;
    this.#used = end;
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
 * Encodes raw kernel records where they lie (no record object on the way) into `buffer`, which
 * is cleared first: how one poll's records enter the pipeline.
 *
 * @param dropInvalid takes the error of a record that cannot be encoded (it is left out), and
 *   returns false for an error it does not take, which is then thrown
 * @returns the flows, views of `buffer`
 * @throws {DecodeError} when the bytes are not whole records
 */
export function encodeRecords(
  buffer: FlowBuffer,
  chunk: RecordChunk,
  dropInvalid: (error: unknown) => boolean,
): EncodedFlows {
  const bytes = chunk.records;
  if (bytes.length % RECORD_SIZE !== 0) {
    throw new DecodeError(
      `Cannot take ${bytes.length} bytes of flow records: not a multiple of ${RECORD_SIZE}`,
    );
  }
  const writer = new RecordWriter(bytes, chunk.clockOffsetNs, chunk.bootId);
  buffer.clear();
  for (let at = 0; at < bytes.length; at += RECORD_SIZE) {
    writer.at = at;
    try {
      buffer.append(writer);
    } catch (error) {
      if (!dropInvalid(error)) throw error;
    }
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
