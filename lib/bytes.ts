/**
 * Joining byte arrays (bodies arrive and leave in parts: HTTP chunks, compressed frames, a
 * batch head and its flows), and writing them as hex (digests, flow IDs).
 *
 * @module
 */

/**
 * The concatenation of `parts`: a plain view of the one part when there is only one, else a new
 * array.
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) {
    return new Uint8Array(parts[0].buffer, parts[0].byteOffset, parts[0].length);
  }
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Two lower-case hex digits per byte value. */
export const HEX_DIGITS: readonly string[] = Array.from(
  { length: 256 },
  (_, b) => b.toString(16).padStart(2, "0"),
);

/** `bytes` as lower-case hex, two digits per byte. */
export function hexOf(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += HEX_DIGITS[bytes[i]];
  return out;
}
