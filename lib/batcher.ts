/**
 * Groups flows into time windows, copying their CBOR encodings as they arrive (a poll's at a
 * time) into one reused chunk, and compressing each chunk as it fills: a window holds compressed
 * bytes, never objects, so memory stays bounded by the byte cap (divided by the compression
 * ratio) whatever the flow rate, and no fresh pages are touched per flow.
 *
 * @module
 */

import type { FlowRecord } from "./flow.ts";
import type { EncodedFlows } from "./encoded_flows.ts";
import { encodeFlow, MAX_BATCH_BYTES } from "./wire.ts";

/** Why a window closed. */
export type CloseReason = "interval" | "records" | "bytes" | "flush";

/** A closed window: the flows of one batch, encoded and compressed, plus its time span. */
export interface ClosedWindow {
  /** Start of the window (inclusive), wall-clock ns. */
  windowStartNs: bigint;
  /** End of the window (exclusive), wall-clock ns: the aligned boundary unless closed early. */
  windowEndNs: bigint;
  /** Number of flows in `frames`. */
  recordCount: number;
  /** Length of the flows' encodings, bytes, before compression. */
  byteLength: number;
  /**
   * The encoded flows (`encodeFlow` outputs, back to back), in pieces, each passed through the
   * batcher's `compress`: decompressed and joined, they complete `encodeBatchHead`. The pieces'
   * frames lie back to back in one buffer of the batcher's, empty for a window without flows.
   */
  frames: Uint8Array[];
  /** Why the window closed. */
  reason: CloseReason;
  /**
   * Gives the frames' buffer back to the batcher, for a later window to fill: call it once the
   * frames are written, and read them no more. A window never released is collected instead.
   */
  release(): void;
}

/** Options of {@linkcode Batcher}. */
export interface BatcherOptions {
  /** Receives each window as it closes, synchronously, in order. */
  onWindow: (window: ClosedWindow) => void;
  /** Window length, ms, 1 s to 10 min; windows align to multiples of it since the epoch. */
  intervalMs?: number;
  /** A window closes early once it holds this many flows. */
  maxRecords?: number;
  /** A window closes early before its encoded flows would exceed this many bytes. */
  maxBytes?: number;
  /** Wall clock, ms since the epoch (injected for tests). */
  now?: () => number;
  /**
   * Compresses one piece of a window's encoded flows into a self-contained frame, at once: the
   * piece's buffer is reused as soon as this returns. Default: a copy, uncompressed.
   */
  compress?: (piece: Uint8Array) => Uint8Array;
}

/** Default window length: one minute, aligned to the wall-clock minute. */
export const DEFAULT_INTERVAL_MS = 60_000;
/** Default cap on flows per batch. */
export const DEFAULT_MAX_RECORDS = 100_000;
/** Default cap on encoded flow bytes per batch (uncompressed). */
export const DEFAULT_MAX_BYTES = 16 * 1024 * 1024;

/** Shortest window, ms. */
export const MIN_INTERVAL_MS = 1_000;
/** Longest window, ms. */
export const MAX_INTERVAL_MS = 600_000;
/**
 * Encoded flows compressed per frame: at 256 KiB zstd and gzip compress as well as over a
 * whole window, and setting up a compressor each time costs little.
 */
export const CHUNK_BYTES = 256 * 1024;
const HEADER_ROOM = 64 * 1024; // batch header and hostnames, well above their real size
/** Smallest byte cap of a window. */
export const MIN_BYTE_CAP = 1024;
/** Largest byte cap of a window: the wire format's limit less room for the batch header. */
export const MAX_BYTE_CAP = MAX_BATCH_BYTES - HEADER_ROOM;

/**
 * Windows of flows, aligned to the interval (the wall-clock minute by default), closed early
 * by a record or byte cap.
 *
 * @example
 * ```ts
 * import { Batcher } from "./batcher.ts";
 * const batcher = new Batcher({ onWindow: (w) => console.log(w.recordCount, w.reason) });
 * // batcher.add(record) per flow; batcher.tick() when msUntilClose() has elapsed
 * ```
 */
export class Batcher {
  readonly #onWindow: (window: ClosedWindow) => void;
  readonly #intervalMs: number;
  readonly #maxRecords: number;
  readonly #maxBytes: number;
  readonly #now: () => number;
  readonly #compress: (piece: Uint8Array) => Uint8Array;
  #startMs: number;
  #endMs: number;
  /**
   * The open window's frames, back to back. A closed window's buffer comes back through its
   * release() and serves the next window: frames allocated per piece lived until the window was
   * spooled, seconds, long enough to reach V8's old generation, and a busy agent held several
   * windows of them (about 9 MiB at 50 000 flows/s) until a full collection.
   */
  #framed: Uint8Array = new Uint8Array(0);
  #framedUsed = 0;
  /** A released buffer, the largest, for the next window. */
  #spare: Uint8Array | undefined;
  /**
   * Flows are copied into this, reused once its content is compressed; the open
   * window's part starts at #chunkStart.
   */
  #chunk = new Uint8Array(CHUNK_BYTES);
  #chunkStart = 0;
  #chunkUsed = 0;
  #records = 0;
  #bytes = 0;

  /**
   * @param options window length, caps, clock and the receiver of closed windows
   * @throws {RangeError} when the interval or a cap is out of range
   */
  constructor(options: BatcherOptions) {
    this.#onWindow = options.onWindow;
    this.#intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
    this.#maxRecords = options.maxRecords ?? DEFAULT_MAX_RECORDS;
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    this.#now = options.now ?? Date.now;
    this.#compress = options.compress ?? ((piece) => piece.slice());
    const interval = this.#intervalMs;
    if (!Number.isInteger(interval) || interval < MIN_INTERVAL_MS || interval > MAX_INTERVAL_MS) {
      throw new RangeError(
        `Invalid batch interval ${interval} ms: use a whole number of ms from ${MIN_INTERVAL_MS} (1 s) to ${MAX_INTERVAL_MS} (10 min)`,
      );
    }
    if (!Number.isInteger(this.#maxRecords) || this.#maxRecords < 1) {
      throw new RangeError(
        `Invalid batch record cap ${this.#maxRecords}: use a whole number of at least 1`,
      );
    }
    const bytes = this.#maxBytes;
    if (!Number.isInteger(bytes) || bytes < MIN_BYTE_CAP || bytes > MAX_BYTE_CAP) {
      throw new RangeError(
        `Invalid batch byte cap ${bytes}: use a whole number of bytes from ${MIN_BYTE_CAP} to ${MAX_BYTE_CAP}`,
      );
    }
    const now = this.#now();
    this.#startMs = this.#alignedStart(now);
    this.#endMs = this.#startMs + interval;
  }

  /** Flows in the open window. */
  get pendingRecords(): number {
    return this.#records;
  }

  /** Encoded bytes in the open window. */
  get pendingBytes(): number {
    return this.#bytes;
  }

  /**
   * Milliseconds until the open window reaches its aligned end (0 when overdue): when to call
   * {@linkcode tick}.
   */
  msUntilClose(): number {
    return Math.max(0, this.#endMs - this.#now());
  }

  /**
   * Encodes a flow into the open window. A window whose end has passed closes first, so the
   * flow lands in the next one; a full window closes right after.
   *
   * @param record the flow
   * @throws {import("./wire.ts").WireFormatError} when the record is invalid (nothing is added)
   */
  add(record: FlowRecord): void {
    const bytes = encodeFlow(record);
    this.addEncoded({ bytes, ends: Uint32Array.of(bytes.length) });
  }

  /**
   * Like {@linkcode add} for each of `flows` in turn, for flows encoded already (one poll's): each
   * run of them that fits the chunk and the window is copied at once. The clock is read
   * once, when the call starts: a poll's flows land in the window open then (or, past a cap, in
   * the next).
   *
   * @param flows encoded flows, and where each ends
   */
  addEncoded(flows: EncodedFlows): void {
    this.tick();
    const { bytes, ends } = flows;
    let first = 0;
    while (first < ends.length) {
      const start = first === 0 ? 0 : ends[first - 1];
      const size = ends[first] - start;
      if (this.#chunkUsed + size > this.#chunk.length) this.#emptyChunk(size);
      if (this.#records > 0 && this.#bytes + size > this.#maxBytes) this.#close("bytes");
      // The run: the first flow, then each next one that neither fills the window nor overflows
      // the chunk or the byte cap (the window closes, or the chunk starts over, there).
      let last = first;
      let records = this.#records + 1;
      let total = this.#bytes + size;
      const room = this.#chunk.length - this.#chunkUsed + start; // the end offsets that fit
      while (last + 1 < ends.length && records < this.#maxRecords && total < this.#maxBytes) {
        const next = ends[last + 1] - ends[last];
        if (ends[last + 1] > room || total + next > this.#maxBytes) break;
        last++;
        records++;
        total += next;
      }
      this.#chunk.set(bytes.subarray(start, ends[last]), this.#chunkUsed);
      this.#chunkUsed += ends[last] - start;
      this.#records = records;
      this.#bytes = total;
      if (records >= this.#maxRecords) this.#close("records");
      else if (total >= this.#maxBytes) this.#close("bytes");
      first = last + 1;
    }
  }

  /**
   * Closes the open window, even an empty one, if its aligned end has passed (or the wall
   * clock stepped back before its start), and opens the next window at the current time.
   *
   * @returns whether a window closed
   */
  tick(): boolean {
    const now = this.#now();
    if (now < this.#endMs && now >= this.#startMs) return false;
    this.#emit(this.#endMs, "interval");
    this.#startMs = this.#alignedStart(now);
    this.#endMs = this.#startMs + this.#intervalMs;
    return true;
  }

  /**
   * Closes the open window now, even an empty one (shutdown). An overdue window closes at its
   * aligned end instead, and then no further, empty window is emitted.
   */
  flush(): void {
    if (!this.tick()) this.#close("flush");
  }

  #alignedStart(ms: number): number {
    return Math.floor(ms / this.#intervalMs) * this.#intervalMs;
  }

  /** Closes early: the window ends now, the next one starts now and keeps the aligned end. */
  #close(reason: CloseReason): void {
    const now = Math.min(Math.max(this.#now(), this.#startMs), this.#endMs);
    this.#emit(now, reason);
    this.#startMs = now;
  }

  #emit(endMs: number, reason: CloseReason): void {
    this.#takeChunk();
    let buffer: Uint8Array | undefined = this.#framed;
    const window: ClosedWindow = {
      windowStartNs: msToNs(this.#startMs),
      windowEndNs: msToNs(endMs),
      recordCount: this.#records,
      byteLength: this.#bytes,
      frames: this.#framedUsed > 0 ? [buffer.subarray(0, this.#framedUsed)] : [],
      reason,
      release: () => {
        // Once only: a second call must not hand over a buffer a later window fills by then.
        if (buffer !== undefined && buffer.length > (this.#spare?.length ?? 0)) {
          this.#spare = buffer;
        }
        buffer = undefined;
      },
    };
    this.#framed = new Uint8Array(0);
    this.#framedUsed = 0;
    this.#records = 0;
    this.#bytes = 0;
    this.#onWindow(window);
  }

  /** Compresses the open window's part of the chunk into its frames; the chunk stays in use. */
  #takeChunk(): void {
    if (this.#chunkUsed > this.#chunkStart) {
      this.#addFrame(this.#compress(this.#chunk.subarray(this.#chunkStart, this.#chunkUsed)));
    }
    this.#chunkStart = this.#chunkUsed;
  }

  #addFrame(frame: Uint8Array): void {
    const need = this.#framedUsed + frame.length;
    if (need > this.#framed.length) {
      let buffer = this.#spare;
      this.#spare = undefined;
      if (buffer === undefined || buffer.length < need) {
        buffer = new Uint8Array(Math.max(need, 2 * this.#framed.length, CHUNK_BYTES));
      }
      buffer.set(this.#framed.subarray(0, this.#framedUsed));
      this.#framed = buffer;
    }
    this.#framed.set(frame, this.#framedUsed);
    this.#framedUsed = need;
  }

  /** Compresses what the chunk holds and starts over at its beginning, with `room` bytes. */
  #emptyChunk(room: number): void {
    this.#takeChunk();
    if (room > this.#chunk.length) this.#chunk = new Uint8Array(room);
    this.#chunkStart = 0;
    this.#chunkUsed = 0;
  }
}

function msToNs(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) * 1000n;
}
