/** Small I/O helpers shared by the commands. @module */

/** A command-line mistake; main.ts prints its message and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Writes all of `bytes`, looping over partial writes. */
export function writeAllSync(w: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) off += w.writeSync(bytes.subarray(off));
}
