/**
 * The content codings of batch bodies: zstd (the default) and gzip. One table says, for each, its
 * HTTP `Content-Encoding` token, its spool file suffix and its magic bytes. Nothing here
 * compresses: the agent does it in the shim (ffi/frame_compressor.ts), everything else through
 * node:zlib (compression.ts); both write what {@linkcode FrameCompressor} describes.
 *
 * zstd level 1 compresses a window of flows about as small as gzip level 3 at about a third of
 * the CPU (docs/benchmarks.md, "Compression"): compression was the largest single cost of the
 * agent. gzip stays for collectors older than zstd support: the shipper falls back to it when a
 * collector answers 415.
 *
 * @module
 */

/** A content coding of batch bodies. */
export type BodyCoding = "zstd" | "gzip";

/** What the agent compresses new batches with unless told otherwise. */
export const DEFAULT_BODY_CODING: BodyCoding = "zstd";

/** Default gzip level for batches (when gzip is the coding). */
export const DEFAULT_GZIP_LEVEL = 3;

/** The zstd level batches are compressed at; its frames carry a content checksum. */
export const ZSTD_LEVEL = 1;

/**
 * The largest zstd window a decoder accepts, as a power of two: 4 MiB. A frame may declare a
 * window of up to 2 GiB, which the decoder would allocate before producing a byte; the agent's
 * level 1 uses at most 512 KiB.
 */
export const ZSTD_WINDOW_LOG_MAX = 22;

/**
 * Compresses one piece into a self-contained zstd frame (level {@linkcode ZSTD_LEVEL}, with a
 * content checksum) or gzip member (level `gzipLevel`). Frames concatenate: the concatenation of
 * several decompresses to the concatenation of their pieces, so a window can be compressed a
 * piece at a time as it fills.
 */
export type FrameCompressor = (
  piece: Uint8Array,
  coding: BodyCoding,
  gzipLevel: number,
) => Uint8Array;

/** Each coding's names and signature. */
export const BODY_CODINGS: Readonly<
  Record<BodyCoding, { contentEncoding: string; fileSuffix: string; magic: readonly number[] }>
> = {
  zstd: { contentEncoding: "zstd", fileSuffix: "zst", magic: [0x28, 0xb5, 0x2f, 0xfd] },
  gzip: { contentEncoding: "gzip", fileSuffix: "gz", magic: [0x1f, 0x8b] },
};

/** The coding named by an HTTP `Content-Encoding` token, if it is one of ours. */
export function codingOfContentEncoding(token: string): BodyCoding | undefined {
  const name = token.trim().toLowerCase();
  if (name === "x-gzip") return "gzip";
  return (Object.keys(BODY_CODINGS) as BodyCoding[]).find((coding) =>
    BODY_CODINGS[coding].contentEncoding === name
  );
}

/** True when `head` starts with the magic bytes of `coding`. */
export function hasMagic(head: Uint8Array, coding: BodyCoding): boolean {
  const magic = BODY_CODINGS[coding].magic;
  return head.length >= magic.length && magic.every((byte, i) => head[i] === byte);
}
