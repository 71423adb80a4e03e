/**
 * Gzip for batch bodies, through node:zlib: unlike CompressionStream it takes a level, and
 * level 3 compresses about as well as 6 at two to three times the speed (see
 * docs/wire_format.md, "Measured").
 *
 * @module
 */

import { createGzip, gunzip as zlibGunzip } from "node:zlib";

/** Default gzip level for batches. */
export const DEFAULT_GZIP_LEVEL = 3;

/**
 * Compresses the concatenation of `parts` without building it first.
 *
 * @param parts the bytes to compress, in order
 * @param level zlib level, 1 (fastest) to 9 (smallest)
 * @returns one gzip member
 */
export function gzip(
  parts: readonly Uint8Array[],
  level = DEFAULT_GZIP_LEVEL,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const stream = createGzip({ level });
    const out: Uint8Array[] = [];
    stream.on("data", (chunk: Uint8Array) => out.push(chunk));
    stream.on("error", reject);
    stream.on("end", () => resolve(concat(out)));
    for (const part of parts) stream.write(part);
    stream.end();
  });
}

/**
 * Decompresses a gzip body, refusing to produce more than `maxBytes`.
 *
 * @param bytes gzip data
 * @param maxBytes largest output accepted
 * @returns the decompressed bytes
 * @throws when the data is not valid gzip (checksum included) or inflates past `maxBytes`
 */
export function gunzip(bytes: Uint8Array, maxBytes: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    zlibGunzip(bytes, { maxOutputLength: maxBytes }, (error, result) => {
      if (error) reject(error);
      else resolve(new Uint8Array(result.buffer, result.byteOffset, result.byteLength));
    });
  });
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
