/**
 * SHA-256 (FIPS 180-4) of bytes in memory, at once. The compiled agent checks its embedded shim
 * with it before loading it: synchronously (WebCrypto's digest is asynchronous), and without
 * node:crypto, whose Node compatibility layer would stay in every agent's memory for one hash at
 * start. tests/sha256_test.ts holds it to the standard's vectors and to node:crypto.
 *
 * @example
 * ```ts
 * import { sha256Hex } from "./sha256.ts";
 * sha256Hex(new TextEncoder().encode("abc")); // "ba7816bf…f20015ad"
 * ```
 *
 * @module
 */

/** The first `count` primes. */
function primes(count: number): number[] {
  const found: number[] = [];
  for (let n = 2; found.length < count; n++) {
    if (found.every((p) => n % p !== 0)) found.push(n);
  }
  return found;
}

/** The first 32 bits of the fractional part of `x` (exact for these roots in a double). */
const fraction32 = (x: number) => Math.floor((x - Math.floor(x)) * 2 ** 32) >>> 0;

/** Round constants: the cube roots of the first 64 primes (FIPS 180-4, 4.2.2). */
const K = Uint32Array.from(primes(64), (p) => fraction32(Math.cbrt(p)));
/** Initial hash value: the square roots of the first 8 primes (FIPS 180-4, 5.3.3). */
const H0 = Uint32Array.from(primes(8), (p) => fraction32(Math.sqrt(p)));

const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));

/** Folds the 64-byte blocks of `view` into the state `h`. */
function compress(h: Uint32Array, w: Uint32Array, view: DataView): void {
  for (let at = 0; at < view.byteLength; at += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(at + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] +
        w[i]) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      [hh, g, f, e, d, c, b, a] = [g, f, e, (d + t1) | 0, c, b, a, (t1 + t2) | 0];
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
}

/** The SHA-256 digest of `bytes`, as 64 lowercase hex digits (what sha256sum prints). */
export function sha256Hex(bytes: Uint8Array): string {
  const h = H0.slice();
  const w = new Uint32Array(64);
  const whole = bytes.length - (bytes.length % 64);
  compress(h, w, new DataView(bytes.buffer, bytes.byteOffset, whole));
  // The rest, a 1 bit, zeros, and the length in bits as 64 bits: one or two last blocks.
  const tail = new Uint8Array(bytes.length - whole + 9 <= 64 ? 64 : 128);
  tail.set(bytes.subarray(whole));
  tail[bytes.length - whole] = 0x80;
  const view = new DataView(tail.buffer);
  view.setUint32(tail.length - 8, Math.floor(bytes.length / 2 ** 29));
  view.setUint32(tail.length - 4, (bytes.length * 8) >>> 0);
  compress(h, w, view);
  return Array.from(h, (word) => word.toString(16).padStart(8, "0")).join("");
}
