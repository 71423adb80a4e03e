/**
 * Interim-record and sweep benchmark: what one snapshot pass (Agent.snapshot(), the
 * `snapshot_flows` TCP socket iterator) and one sweep pass (Agent.sweep(), `sweep_flows` over the
 * flow states) cost the agent process with many open connections. For each size, the agent
 * is opened first (so sock_ops tracks every new socket), build/hold_connections opens that many
 * idle loopback connections (both ends on this host: two tracked sockets each) and holds them, and
 * the pass runs `--reps` times, alternating the kinds side by side:
 *   - `ship`: the agent's whole pass: `write`, and each record encoded into a batch window and
 *     compressed (zstd frames), as the agent's intake does;
 *   - `write`: minimum age 0, one interim record per tracked open socket;
 *   - `walk`: a minimum age no socket has, so the iterator walks and looks up every socket but
 *     writes nothing: the share of the pass that is the walk itself;
 *   - `sweep`: a sweep pass, which checks every flow state's socket (all open: no record);
 *   - `idle`: no pass, a wait as long as the last `write` pass: the baseline of the process's
 *     CPU time and of the event loop's lateness on this host.
 * Per pass it measures the wall time, the process's CPU time (user + sys of every thread, from
 * getrusage: the kernel's iterator time is sys of the worker thread that reads), and the longest
 * stall of the event loop (a 1 ms timer's worst lateness). Prints a table per 1000 sockets,
 * median and worst repetition.
 *
 * Run as root: `make bench-interim` (builds build/hold_connections first), or
 * `deno run -A bench/interim_bench.ts --sizes 10000,100000 --reps 5`.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { Agent } from "../ffi/agent.ts";
import { Batcher, MAX_BYTE_CAP } from "../lib/batcher.ts";
import { compressFrame } from "../lib/compression.ts";
import { RECORD_SIZE } from "../lib/decode.ts";
import { encodeRecords, FlowBuffer } from "../lib/encoded_flows.ts";
import { ConnectionHolder, HOLDER } from "../tests/_traffic.ts";

const NEVER = 2n ** 64n - 1n;
const BOOT_ID = new Uint8Array(16).fill(1);

const HELP = `Usage: deno run --allow-all bench/interim_bench.ts [options]

Options:
  --sizes LIST       connections held open, comma separated (default 10000,100000)
  --reps N           passes of each kind per size (default 5)
  --ports N          listener ports of each holder process (default 8)
  --addr A           loopback address the listeners bind (default 127.91.0.1)
  --chunk N          records per read of the pass (default 4096)
  -h, --help         show this help
`;

interface Pass {
  kind: "ship" | "write" | "walk" | "sweep" | "idle";
  records: number;
  wallMs: number;
  cpuMs: number;
  sysMs: number;
  stallMs: number;
}

function cpuMicros(): { user: number; system: number } {
  return process.cpuUsage();
}

/**
 * One pass, measured; `stallMs` is how late a 1 ms timer ran at worst meanwhile. Kind `idle`
 * runs no pass but waits `idleMs` with the same timer: the baseline of the process's CPU and of
 * the timer's lateness on this host.
 */
async function measurePass(
  agent: Agent,
  kind: Pass["kind"],
  buffer: Uint8Array,
  idleMs = 0,
): Promise<Pass> {
  let stallMs = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    stallMs = Math.max(stallMs, now - last - 1);
    last = now;
  }, 1);
  try {
    const cpu0 = cpuMicros();
    const t0 = performance.now();
    let bytes = 0;
    // One window takes the whole pass, as a minute's window would at the agent's byte cap.
    const flowBuffer = new FlowBuffer();
    const batcher = kind === "ship"
      ? new Batcher({
        onWindow: () => {},
        maxRecords: 2 ** 31,
        maxBytes: MAX_BYTE_CAP,
        compress: compressFrame,
        intervalMs: 600_000,
      })
      : undefined;
    const records = kind === "idle"
      ? await new Promise<number>((resolve) => setTimeout(() => resolve(0), idleMs))
      : kind === "sweep"
      ? await agent.sweep()
      : await agent.snapshot(kind === "walk" ? NEVER : 0n, buffer, (chunk) => {
        bytes += chunk.length;
        if (batcher === undefined) return;
        const poll = { records: chunk, clockOffsetNs: 0n, bootId: BOOT_ID };
        batcher.addEncoded(encodeRecords(flowBuffer, poll, () => false));
      });
    batcher?.flush();
    const wallMs = performance.now() - t0;
    const cpu1 = cpuMicros();
    // A sweep's records go to the ring, not through the pass.
    if (kind !== "sweep" && bytes !== records * RECORD_SIZE) {
      throw new Error(`A pass handed over ${bytes} bytes for ${records} records`);
    }
    return {
      kind,
      records,
      wallMs,
      cpuMs: (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / 1000,
      sysMs: (cpu1.system - cpu0.system) / 1000,
      stallMs: Math.max(0, stallMs),
    };
  } finally {
    clearInterval(timer);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function fmt(x: number, digits = 2): string {
  return x.toFixed(digits);
}

/** RLIMIT_NOFILE's hard limit, which a holder process may raise its own limit to. */
async function hardFileLimit(): Promise<number> {
  const out = await new Deno.Command("sh", { args: ["-c", "ulimit -Hn"] }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  return text === "unlimited" ? 1 << 30 : Number(text);
}

/** Holders enough for `connections` (each holds what its descriptor limit allows), started. */
async function holdConnections(
  connections: number,
  options: { ports: number; addr: string },
  holders: ConnectionHolder[],
): Promise<void> {
  const perHolder = Math.floor((await hardFileLimit() - options.ports - 64) / 2);
  const count = Math.ceil(connections / perHolder);
  for (let i = 0; i < count; i++) {
    const share = Math.floor(connections / count) + (i < connections % count ? 1 : 0);
    holders.push(await ConnectionHolder.start(options.addr, options.ports, share));
  }
}

async function runSize(
  connections: number,
  options: { reps: number; ports: number; addr: string; chunk: number },
): Promise<Pass[]> {
  const pinDir = `/sys/fs/bpf/flowexporter-bench-${crypto.randomUUID().slice(0, 8)}`;
  // Every socket of the holders has a state: room for both ends, twice over (an LRU map evicts
  // before it is full).
  const flowsMax = Math.max(131072, 2 ** Math.ceil(Math.log2(4 * connections)));
  const passes: Pass[] = [];
  const holders: ConnectionHolder[] = [];
  let agent: Agent | undefined;
  try {
    agent = Agent.open({ pinDir, noPin: true, noSeed: true, flowsMax });
    const start = performance.now();
    await holdConnections(connections, options, holders);
    console.error(
      `# ${connections} connections open in ${fmt((performance.now() - start) / 1000, 1)} s ` +
        `(${holders.length} holder processes); ${options.reps} passes of each kind`,
    );
    const buffer = new Uint8Array(options.chunk * RECORD_SIZE);
    await measurePass(agent, "ship", buffer); // warm-up: first touch of the buffer, JIT
    for (let rep = 0; rep < options.reps; rep++) {
      const order: Pass["kind"][] = rep % 2
        ? ["sweep", "walk", "write", "ship"]
        : ["ship", "write", "walk", "sweep"];
      for (const kind of order) passes.push(await measurePass(agent, kind, buffer));
      const written = passes.findLast((p) => p.kind === "write")!;
      passes.push(await measurePass(agent, "idle", buffer, written.wallMs));
    }
  } finally {
    // The agent closes before the holders close their connections: no final records go to a
    // ring buffer that nobody reads.
    agent?.close();
    for (const holder of holders) await holder[Symbol.asyncDispose]();
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
  }
  return passes;
}

function report(connections: number, passes: Pass[]): void {
  for (const kind of ["ship", "write", "walk", "sweep", "idle"] as const) {
    const mine = passes.filter((p) => p.kind === kind);
    const sockets = 2 * connections;
    const per1k = (x: number) => (x * 1000) / sockets;
    const stat = (f: (p: Pass) => number) => {
      const xs = mine.map(f);
      return `${fmt(median(xs))} / ${fmt(Math.max(...xs))}`;
    };
    console.log(
      `| ${connections} | ${sockets} | ${kind} | ${median(mine.map((p) => p.records))} | ${
        stat((p) => p.wallMs)
      } | ${stat((p) => per1k(p.wallMs))} | ${stat((p) => per1k(p.cpuMs))} | ${
        stat((p) => per1k(p.sysMs))
      } | ${stat((p) => p.stallMs)} |`,
    );
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: "string", default: "10000,100000" },
      reps: { type: "string", default: "5" },
      ports: { type: "string", default: "8" },
      addr: { type: "string", default: "127.91.0.1" },
      chunk: { type: "string", default: "4096" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  try {
    Deno.statSync(HOLDER);
  } catch {
    throw new Error(
      `Cannot find ${HOLDER} (run make bench-interim, or make build/hold_connections)`,
    );
  }
  const sizes = values.sizes.split(",").map(Number);
  const options = {
    reps: Number(values.reps),
    ports: Number(values.ports),
    addr: values.addr,
    chunk: Number(values.chunk),
  };
  const results: [number, Pass[]][] = [];
  for (const size of sizes) results.push([size, await runSize(size, options)]);
  console.log(
    `\nOne snapshot or sweep pass: median / worst of ${options.reps} (sockets: both ends of each connection)\n`,
  );
  console.log(
    "| connections | sockets | pass | records | wall ms | wall ms per 1000 sockets | CPU ms per 1000 sockets | of which sys | event loop stall ms |",
  );
  console.log("| --: | --: | --- | --: | --: | --: | --: | --: | --: |");
  for (const [size, passes] of results) report(size, passes);
}

if (import.meta.main) await main();
