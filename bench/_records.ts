/**
 * Counts the records a tracer wrote for the churn's sockets. The churn's
 * servers listen on a grid of loopback addresses and ports: a record whose
 * local endpoint is on the grid is a server socket, one whose remote endpoint
 * is on it a client socket. Records are counted, never deduplicated on
 * 4-tuples: they repeat within a run (ephemeral ports are reused), so a key on
 * them would merge distinct flows. Where records may come twice (an agent
 * restarted, or replaying its journal), {@linkcode FlowTally} deduplicates
 * them on the agent's `flow_id` (boot ID and socket cookie, unique per socket),
 * read from JSON lines or from the spool's batches.
 *
 * @module
 */
import { formatFlowId, hasFlowId } from "../lib/flow_id.ts";
import { decodeBatch, MAX_BATCH_BYTES } from "../lib/wire.ts";
import { decompress } from "../lib/compression.ts";
import { spoolFileCoding } from "../lib/spool.ts";

/** The churn's listening addresses and ports. */
export interface Grid {
  addrs: Set<string>;
  ports: Set<number>;
}

/** Records per side of the churn's connections. */
export interface SideCounts {
  /** Records of accepted (server) sockets. */
  server: number;
  /** Records of connecting (client) sockets. */
  client: number;
}

/**
 * Output formats the benchmark reads: the agent's JSON lines, tcplife's text
 * columns, and a bpftrace map printed at exit (`@closes: N`, a host-wide count).
 */
export type RecordFormat = "json" | "tcplife" | "count";

/** Builds the grid of `addrs` consecutive addresses from `firstAddr` times `ports` ports. */
export function churnGrid(firstAddr: string, addrs: number, portBase: number, ports: number): Grid {
  const [a, b, c, d] = firstAddr.split(".").map(Number);
  const first = ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
  const grid: Grid = { addrs: new Set(), ports: new Set() };
  for (let i = 0; i < addrs; i++) {
    const n = first + i;
    grid.addrs.add(`${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`);
  }
  for (let p = 0; p < ports; p++) grid.ports.add(portBase + p);
  return grid;
}

const JSON_ENDPOINTS =
  /"local_ip":"([^"]*)","local_port":(\d+),"remote_ip":"([^"]*)","remote_port":(\d+)/;

/** Endpoints of one line as [localIp, localPort, remoteIp, remotePort], or null. */
type Endpoints = [string, number, string, number] | null;

function jsonEndpoints(line: string): Endpoints {
  const m = JSON_ENDPOINTS.exec(line);
  return m ? [m[1], Number(m[2]), m[3], Number(m[4])] : null;
}

/** tcplife: PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS; COMM may hold spaces, so read from the end. */
function tcplifeEndpoints(line: string): Endpoints {
  const f = line.trim().split(/\s+/);
  const n = f.length;
  if (n < 9) return null;
  const lport = Number(f[n - 6]);
  const rport = Number(f[n - 4]);
  if (!Number.isInteger(lport) || !Number.isInteger(rport)) return null; // the header
  return [f[n - 7], lport, f[n - 5], rport];
}

/** Calls `fn` with each line of the file at `path`, read as a stream (outputs are large). */
async function forEachLine(path: string, fn: (line: string) => void): Promise<void> {
  const file = await Deno.open(path);
  let rest = "";
  for await (const chunk of file.readable.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) fn(line);
  }
  if (rest) fn(rest);
}

/** Counts the grid's server and client records in a tracer's output file. */
export async function countGridRecords(
  path: string,
  format: RecordFormat,
  grid: Grid,
): Promise<SideCounts> {
  const parse = format === "json" ? jsonEndpoints : tcplifeEndpoints;
  const counts: SideCounts = { server: 0, client: 0 };
  const count = (line: string) => {
    const ep = parse(line);
    const s = ep && side(grid, ep);
    if (s) counts[s]++;
  };
  await forEachLine(path, count);
  return counts;
}

/** The `@closes: N` total bpftrace prints when it exits. */
export async function readCount(path: string): Promise<number> {
  const m = /^@closes: (\d+)$/m.exec(await Deno.readTextFile(path));
  if (!m) throw new Error(`Cannot find the @closes count in ${path}: bpftrace printed none`);
  return Number(m[1]);
}

/**
 * The churn's flows counted once per `flow_id`, with the records that came more than once.
 * Records without a flow ID (wire schema 1 and 2) are counted, not deduplicated.
 */
export class FlowTally {
  /** Distinct server-side flows. */
  server = 0;
  /** Distinct client-side flows. */
  client = 0;
  /** Records beyond the first of their flow ID. */
  duplicates = 0;
  /** Records read, duplicates included. */
  records = 0;
  readonly #seen = new Set<string>();

  /** Distinct flows (server + client). */
  get unique(): number {
    return this.server + this.client;
  }

  /** Counts one record of side `side` with flow ID `id` (null: none). */
  add(id: string | null, side: "server" | "client"): void {
    this.records++;
    if (id !== null) {
      if (this.#seen.has(id)) {
        this.duplicates++;
        return;
      }
      this.#seen.add(id);
    }
    this[side]++;
  }

  /** Whether a record with flow ID `id` was counted. */
  has(id: string): boolean {
    return this.#seen.has(id);
  }

  /** Flow IDs counted here that `other` lacks. */
  notIn(other: FlowTally): number {
    let n = 0;
    for (const id of this.#seen) if (!other.has(id)) n++;
    return n;
  }
}

function side(grid: Grid, ep: NonNullable<Endpoints>): "server" | "client" | undefined {
  if (grid.ports.has(ep[1]) && grid.addrs.has(ep[0])) return "server";
  if (grid.ports.has(ep[3]) && grid.addrs.has(ep[2])) return "client";
  return undefined;
}

const JSON_FLOW_ID = /^\{"flow_id":(?:"([^"]+)"|null),/;

/**
 * Adds the grid's records in a file of the agent's JSON lines to `tally`.
 *
 * @returns the grid's records in this file, duplicates included
 */
export async function tallyJsonRecords(
  path: string,
  grid: Grid,
  tally: FlowTally,
): Promise<number> {
  let n = 0;
  const count = (line: string) => {
    const ep = jsonEndpoints(line);
    const s = ep && side(grid, ep);
    if (!s) return;
    n++;
    tally.add(JSON_FLOW_ID.exec(line)?.[1] ?? null, s);
  };
  await forEachLine(path, count);
  return n;
}

/**
 * Adds the grid's flows in every batch of a spool directory (`batch-*.cbor.zst` or `.gz`:
 * decompress, then `decodeBatch` from lib/wire.ts) to `tally`.
 *
 * @returns the batches read and the grid's flows in them, duplicates included
 */
export async function tallySpool(
  spoolDir: string,
  grid: Grid,
  tally: FlowTally,
): Promise<{ batches: number; flows: number }> {
  const names = [...Deno.readDirSync(spoolDir)]
    .filter((e) => e.isFile && spoolFileCoding(e.name) !== undefined)
    .map((e) => e.name)
    .sort();
  let flows = 0;
  for (const name of names) {
    const body = await decompress(
      await Deno.readFile(`${spoolDir}/${name}`),
      spoolFileCoding(name)!,
      MAX_BATCH_BYTES,
    );
    for (const f of decodeBatch(body).flows) {
      const ep: Endpoints = [ipText(f.localIp), f.localPort, ipText(f.remoteIp), f.remotePort];
      const s = side(grid, ep);
      if (!s) continue;
      flows++;
      tally.add(hasFlowId(f) ? formatFlowId(f.bootId, f.cookie) : null, s);
    }
  }
  return { batches: names.length, flows };
}

/** IPv4 text of 4 bytes; other lengths are never on the grid, and get a placeholder. */
function ipText(bytes: Uint8Array): string {
  return bytes.length === 4 ? bytes.join(".") : "ipv6";
}
