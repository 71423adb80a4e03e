/**
 * Reading an agent's spool directory from tests: which files are batches, and their content.
 *
 * @module
 */
import { decompress } from "../lib/compression.ts";
import { spoolFileCoding } from "../lib/spool.ts";
import { decodeBatch, type DecodedBatch, MAX_BATCH_BYTES } from "../lib/wire.ts";

/** True for the name of a spooled batch file (any coding). */
export function isSpooledBatch(name: string): boolean {
  return spoolFileCoding(name) !== undefined;
}

/** Decodes a spooled batch file's body. */
export async function decodeSpooledBatch(path: string, body?: Uint8Array): Promise<DecodedBatch> {
  const coding = spoolFileCoding(path);
  if (coding === undefined) throw new Error(`${path} is not a spooled batch file`);
  return decodeBatch(
    await decompress(body ?? await Deno.readFile(path), coding, MAX_BATCH_BYTES),
  );
}
