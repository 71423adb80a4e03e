/** Small I/O helpers shared by the commands. @module */

/** Writes all of `bytes`, looping over partial writes. */
export function writeAllSync(w: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) off += w.writeSync(bytes.subarray(off));
}
