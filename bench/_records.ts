/**
 * Counts the records a tracer wrote for the churn's sockets. The churn's
 * servers listen on a grid of loopback addresses and ports: a record whose
 * local endpoint is on the grid is a server socket, one whose remote endpoint
 * is on it a client socket. Records are counted, never deduplicated: 4-tuples
 * repeat within a run (ephemeral ports are reused), so a key on them would
 * merge distinct flows.
 *
 * @module
 */

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
    if (!ep) return;
    if (grid.ports.has(ep[1]) && grid.addrs.has(ep[0])) counts.server++;
    else if (grid.ports.has(ep[3]) && grid.addrs.has(ep[2])) counts.client++;
  };
  const file = await Deno.open(path);
  let rest = "";
  for await (const chunk of file.readable.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) count(line);
  }
  if (rest) count(rest);
  return counts;
}

/** The `@closes: N` total bpftrace prints when it exits. */
export async function readCount(path: string): Promise<number> {
  const m = /^@closes: (\d+)$/m.exec(await Deno.readTextFile(path));
  if (!m) throw new Error(`Cannot find the @closes count in ${path}: bpftrace printed none`);
  return Number(m[1]);
}
