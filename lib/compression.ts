/**
 * Batch bodies through node:zlib: zstd and gzip frames, streams, and the bounded decoder the
 * collector and the spool's checks use. The agent compresses its windows in the shim instead
 * (ffi/frame_compressor.ts), and loads this module only for the rare paths that decode (a spooled
 * batch of an earlier run, a collector that wants gzip): node:zlib brings Node's compatibility
 * layer, about 4 MiB of an idle agent. The codings' names, magic bytes and defaults are in
 * body_coding.ts.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { concatBytes } from "./bytes.ts";
import type { Transform } from "node:stream";
import {
  constants,
  createGunzip,
  createGzip,
  createZstdCompress,
  createZstdDecompress,
  gzipSync,
  zstdCompressSync,
} from "node:zlib";
import {
  type BodyCoding,
  DEFAULT_BODY_CODING,
  DEFAULT_GZIP_LEVEL,
  ZSTD_LEVEL,
  ZSTD_WINDOW_LOG_MAX,
} from "./body_coding.ts";

/** zstd at the batches' level with a content checksum, so a flipped bit is caught as gzip's CRC is. */
const ZSTD_PARAMS = {
  [constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL,
  [constants.ZSTD_c_checksumFlag]: 1,
};

/**
 * The `FrameCompressor` (body_coding.ts) of node:zlib: one self-contained zstd frame or gzip member, at
 * once (on the calling thread).
 *
 * @param piece the bytes to compress
 * @param coding zstd (level 1, checksummed) or gzip (level `gzipLevel`)
 * @param gzipLevel zlib level, 1 (fastest) to 9 (smallest), for gzip
 */
export function compressFrame(
  piece: Uint8Array,
  coding: BodyCoding = DEFAULT_BODY_CODING,
  gzipLevel = DEFAULT_GZIP_LEVEL,
): Uint8Array {
  const out = coding === "zstd"
    ? zstdCompressSync(piece, { params: ZSTD_PARAMS })
    : gzipSync(piece, { level: gzipLevel });
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * Compresses the concatenation of `parts` without building it first.
 *
 * @param parts the bytes to compress, in order
 * @param coding zstd (level 1) or gzip (level `gzipLevel`)
 * @param gzipLevel zlib level, 1 (fastest) to 9 (smallest), for gzip
 * @returns one zstd frame or gzip member
 */
export function compress(
  parts: readonly Uint8Array[],
  coding: BodyCoding = DEFAULT_BODY_CODING,
  gzipLevel = DEFAULT_GZIP_LEVEL,
): Promise<Uint8Array> {
  const stream: Transform = coding === "zstd"
    ? createZstdCompress({ params: ZSTD_PARAMS })
    : createGzip({ level: gzipLevel });
  return new Promise((resolve, reject) => {
    const out: Uint8Array[] = [];
    stream.on("data", (chunk: Uint8Array) => out.push(chunk));
    stream.on("error", reject);
    stream.on("end", () => resolve(concatBytes(out)));
    for (const part of parts) stream.write(part);
    stream.end();
  });
}

/** Why {@linkcode decompress} refused a body. */
export class DecompressError extends Error {
  override name = "DecompressError";
  /**
   * @param message what is wrong with the data
   * @param tooLarge true when the data is fine but inflates past the limit
   */
  constructor(message: string, readonly tooLarge = false) {
    super(message);
  }
}

/** Compressed bytes inflated between two turns of the event loop. */
const INFLATE_SLICE = 8 * 1024;

/**
 * Decompresses a whole body, refusing to produce more than `maxBytes`. Inflates a slice at a
 * time, yielding to the event loop between slices: node:zlib inflates on the calling thread in
 * Deno, and a 64 MiB body in one go would stall everything else (a collector's other requests
 * and timeouts) for up to a second. Stops as soon as the output passes `maxBytes`.
 *
 * @param bytes zstd or gzip data
 * @param coding how `bytes` are compressed
 * @param maxBytes largest output accepted
 * @returns the decompressed bytes
 * @throws {DecompressError} when the data is not valid (checksum included), is cut short,
 *   needs a larger window than {@linkcode ZSTD_WINDOW_LOG_MAX}, or inflates past `maxBytes`
 *   (`tooLarge`)
 */
export async function decompress(
  bytes: Uint8Array,
  coding: BodyCoding,
  maxBytes: number,
): Promise<Uint8Array> {
  const out: Uint8Array[] = [];
  const budget = { left: maxBytes, maxBytes };
  if (coding === "gzip") {
    await inflate(bytes, createGunzip({ chunkSize: gzipChunkSize(bytes) }), out, budget);
  } else {
    // node:zlib's zstd stream stops after the first frame: each frame gets a decoder of its own.
    for (const [start, end, size] of checkZstdFrames(bytes)) {
      const decoder = createZstdDecompress({
        chunkSize: inflateChunk(size),
        params: { [constants.ZSTD_d_windowLogMax]: ZSTD_WINDOW_LOG_MAX },
      });
      await inflate(bytes.subarray(start, end), decoder, out, budget);
    }
  }
  return concatBytes(out);
}

/** Largest piece of output a decoder hands over at once. */
const INFLATE_CHUNK = 256 * 1024;
/** Smallest: a page. */
const INFLATE_CHUNK_MIN = 4096;
/** A gzip member's header (10 bytes) and trailer (CRC and size, 8). */
const GZIP_MIN_BYTES = 18;

/**
 * node:zlib's `chunkSize` for gzip data: sized from the size its last member says it inflates to
 * (ISIZE, mod 2^32), see {@linkcode inflateChunk}.
 */
export function gzipChunkSize(bytes: Uint8Array): number {
  if (bytes.length < GZIP_MIN_BYTES) return INFLATE_CHUNK;
  return inflateChunk(
    new DataView(bytes.buffer, bytes.byteOffset + bytes.length - 4, 4).getUint32(0, true),
  );
}

/**
 * node:zlib's `chunkSize` for data that says it inflates to `size` bytes (-1: it does not say;
 * untrusted either way). Each piece of output is a new zeroed buffer, and one of 256 KiB (fresh
 * pages, each a fault) for a 40 KiB batch cost more than the inflating itself (docs/cluster.md,
 * "Fewer buffers per batch"). The size only chooses the piece: the caller's limit still bounds
 * the output, and data that holds more than it says is inflated in more pieces. One byte more
 * than the size, so that the decoder finds the end without a second piece.
 */
function inflateChunk(size: number): number {
  if (size < 0) return INFLATE_CHUNK;
  const pages = Math.ceil((size + 1) / INFLATE_CHUNK_MIN) * INFLATE_CHUNK_MIN;
  return Math.min(INFLATE_CHUNK, pages);
}

/** Runs `bytes` through `inflater` a slice at a time into `out`, within `budget.left` bytes. */
async function inflate(
  bytes: Uint8Array,
  inflater: Transform,
  out: Uint8Array[],
  budget: { left: number; maxBytes: number },
): Promise<void> {
  let failure: DecompressError | undefined;
  inflater.on("data", (chunk: Uint8Array) => {
    budget.left -= chunk.length;
    if (budget.left >= 0) out.push(chunk);
    else if (failure === undefined) {
      failure = new DecompressError(`inflates past the ${budget.maxBytes}-byte limit`, true);
      inflater.destroy();
    }
  });
  inflater.on("error", (error: Error) => {
    failure ??= new DecompressError(error.message || "corrupt data");
  });
  const finished = new Promise<void>((resolve) => {
    inflater.once("end", resolve);
    inflater.once("close", resolve);
  });
  for (let at = 0; at < bytes.length && failure === undefined; at += INFLATE_SLICE) {
    if (!inflater.write(bytes.subarray(at, at + INFLATE_SLICE))) {
      await Promise.race([new Promise((resolve) => inflater.once("drain", resolve)), finished]);
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (failure === undefined) inflater.end();
  await finished;
  if (failure !== undefined) throw failure;
}

const ZSTD_MAGIC = 0xfd2fb528;
/** Skippable frames carry 0x184D2A50 to 0x184D2A5F. */
const ZSTD_SKIPPABLE_MASK = 0xfffffff0;
const ZSTD_SKIPPABLE_MAGIC = 0x184d2a50;
const ZSTD_RESERVED_BLOCK = 3;
const ZSTD_RLE_BLOCK = 1;

/**
 * Walks the frames and block headers of zstd data without decompressing it, and throws unless
 * every frame is whole. node:zlib's zstd decoder ends quietly on a frame cut short (whatever it
 * produced so far looks like the whole body), so truncation must be caught here; corruption
 * inside a frame is caught by the content checksum the encoder adds.
 *
 * @returns where each data frame starts and ends, and the content size its header declares (-1
 *   when it declares none; untrusted), skippable frames left out
 * @throws {DecompressError} saying where the data stops making sense
 */
export function checkZstdFrames(bytes: Uint8Array): [number, number, number][] {
  const frames: [number, number, number][] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (at: number, n: number, what: string) => {
    if (at + n > bytes.length) {
      throw new DecompressError(`zstd data cut short: ${what} at byte ${at} needs ${n} bytes`);
    }
  };
  if (bytes.length === 0) throw new DecompressError("zstd data is empty");
  let at = 0;
  while (at < bytes.length) {
    need(at, 4, "a frame's magic number");
    const magic = view.getUint32(at, true);
    if ((magic & ZSTD_SKIPPABLE_MASK) >>> 0 === ZSTD_SKIPPABLE_MAGIC) {
      need(at + 4, 4, "a skippable frame's size");
      const size = view.getUint32(at + 4, true);
      need(at + 8, size, "a skippable frame");
      at += 8 + size;
      continue;
    }
    if (magic !== ZSTD_MAGIC) throw new DecompressError(`not zstd data at byte ${at}`);
    const frameStart = at;
    need(at + 4, 1, "a frame header");
    const descriptor = bytes[at + 4];
    const singleSegment = (descriptor & 0x20) !== 0;
    const checksum = (descriptor & 0x04) !== 0;
    const dictionaryIdBytes = [0, 1, 2, 4][descriptor & 0x03];
    const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][descriptor >> 6];
    const contentSizeAt = at + 5 + (singleSegment ? 0 : 1) + dictionaryIdBytes;
    need(contentSizeAt, contentSizeBytes, "a frame header");
    const contentSize = zstdContentSize(view, contentSizeAt, contentSizeBytes);
    at = contentSizeAt + contentSizeBytes;
    for (let last = false; !last;) {
      need(at, 3, "a block header");
      const header = bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16);
      last = (header & 1) !== 0;
      const type = (header >> 1) & 0x03;
      if (type === ZSTD_RESERVED_BLOCK) {
        throw new DecompressError(`zstd block of reserved type at byte ${at}`);
      }
      const size = type === ZSTD_RLE_BLOCK ? 1 : header >>> 3;
      need(at + 3, size, "a block");
      at += 3 + size;
    }
    if (checksum) {
      need(at, 4, "a frame checksum");
      at += 4;
    }
    frames.push([frameStart, at, contentSize]);
  }
  return frames;
}

/** A zstd frame header's Frame_Content_Size field of `n` bytes at `at` (RFC 8878, 3.1.1.1.4). */
function zstdContentSize(view: DataView, at: number, n: number): number {
  switch (n) {
    case 1:
      return view.getUint8(at);
    case 2:
      return view.getUint16(at, true) + 256;
    case 4:
      return view.getUint32(at, true);
    case 8:
      return Number(view.getBigUint64(at, true));
    default:
      return -1;
  }
}
