/**
 * Reading an agent's spool directory from tests: which files are batches, and their content.
 *
 * @module
 */
import { decompress } from "../lib/compression.ts";
import { spoolFileCoding } from "../lib/spool.ts";
import { decodeBatch, type DecodedBatch, MAX_BATCH_BYTES } from "../lib/wire.ts";
import { formatFlowId } from "../lib/flow_id.ts";
import { type ChurnGrid, type GridSocket, onGrid } from "./_traffic.ts";

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

/** The flows of every batch in a spool directory, as grid sockets. */
export async function spooledSockets(grid: ChurnGrid, spoolDir: string): Promise<GridSocket[]> {
  const sockets: GridSocket[] = [];
  const ip = (b: Uint8Array) => b.join("."); // the grid is IPv4
  for (const entry of Deno.readDirSync(spoolDir)) {
    if (!entry.isFile || !isSpooledBatch(entry.name)) continue;
    for (const f of (await decodeSpooledBatch(`${spoolDir}/${entry.name}`)).flows) {
      const flowId = formatFlowId(f.bootId, f.cookie);
      if (onGrid(grid, ip(f.localIp), f.localPort)) sockets.push({ flowId, side: "server" });
      else if (onGrid(grid, ip(f.remoteIp), f.remotePort)) sockets.push({ flowId, side: "client" });
    }
  }
  return sockets;
}
