/**
 * `flowexporter run`: capture every closed TCP socket on this host and
 * write one record per flow.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Agent, DEFAULT_PIN_DIR } from "../ffi/agent.ts";
import { FlowSource } from "../ffi/flow_source.ts";
import { ClockAnchor } from "../lib/clock.ts";
import { decodeFlows } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { formatFlowJson } from "../lib/json_lines.ts";
import { UsageError, writeAllSync } from "./_io.ts";

export const RUN_HELP = `Usage: flowexporter run [options]

Captures every closed TCP socket (IPv4 and IPv6) and writes one JSON object
per flow to stdout. Needs root (or CAP_BPF + CAP_PERFMON) and kernel BTF.

Options:
  --output json|none        stdout format (default json)
  --pin-dir DIR             bpffs directory of the identity maps (default ${DEFAULT_PIN_DIR})
  --perf-buffer             use the perf buffer instead of the ring buffer
  --classic-tracepoint      attach the classic tracepoint instead of the BTF-typed one
  --no-seed                 do not seed sockets that are already open
  --ring-bytes N            kernel buffer size in bytes, a power of two (default 8388608)
  --flows-max N             open sockets tracked at once (default 131072)
  --poll-ms N               longest delay before records are drained, ms (default 100)
  --verbose                 keep libbpf's debug output for load errors
  -h, --help                show this help
`;

/** Parsed `run` options. */
export interface RunOptions {
  output: "json" | "none";
  pinDir: string;
  perfBuffer: boolean;
  classicTracepoint: boolean;
  noSeed: boolean;
  ringBytes: number;
  flowsMax: number;
  pollMs: number;
  verbose: boolean;
}

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`Invalid --${name} ${JSON.stringify(value)}: expected a positive integer`);
  }
  return n;
}

/** Parses `run` arguments; throws {@linkcode UsageError} naming the bad flag. */
export function parseRunArgs(args: string[]): RunOptions | "help" {
  const { values } = parseArgs({
    args,
    options: {
      output: { type: "string", default: "json" },
      "pin-dir": { type: "string", default: DEFAULT_PIN_DIR },
      "perf-buffer": { type: "boolean", default: false },
      "classic-tracepoint": { type: "boolean", default: false },
      "no-seed": { type: "boolean", default: false },
      "ring-bytes": { type: "string" },
      "flows-max": { type: "string" },
      "poll-ms": { type: "string" },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return "help";
  if (values.output !== "json" && values.output !== "none") {
    throw new UsageError(
      `Invalid --output ${JSON.stringify(values.output)}: expected json or none`,
    );
  }
  const ringBytes = positiveInt("ring-bytes", values["ring-bytes"], 8 << 20);
  if ((ringBytes & (ringBytes - 1)) !== 0 || ringBytes < 4096) {
    throw new UsageError(
      `Invalid --ring-bytes ${ringBytes}: expected a power of two of at least 4096`,
    );
  }
  return {
    output: values.output,
    pinDir: values["pin-dir"],
    perfBuffer: values["perf-buffer"],
    classicTracepoint: values["classic-tracepoint"],
    noSeed: values["no-seed"],
    ringBytes,
    flowsMax: positiveInt("flows-max", values["flows-max"], 131072),
    pollMs: positiveInt("poll-ms", values["poll-ms"], 100),
    verbose: values.verbose,
  };
}

/** Where decoded flows go. */
export type FlowSink = (records: FlowRecord[]) => void;

const encoder = new TextEncoder();

/** A sink writing JSON lines to stdout, one write per batch. */
export function stdoutJsonSink(): FlowSink {
  return (records) => {
    if (records.length === 0) return;
    let text = "";
    for (const r of records) text += formatFlowJson(r) + "\n";
    writeAllSync(Deno.stdout, encoder.encode(text));
  };
}

/** Resolves when SIGINT or SIGTERM arrives. */
export function terminationSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
}

/** Runs the capture until SIGINT/SIGTERM; returns the exit code. */
export async function run(options: RunOptions, sinks: FlowSink[] = []): Promise<number> {
  if (options.output === "json") sinks = [stdoutJsonSink(), ...sinks];
  using agent = Agent.open(options);
  const clock = new ClockAnchor(() => agent.clockReading());
  let failure: Error | undefined;
  let captured = 0;
  const stats = agent.stats();
  console.error(
    `flowexporter: capturing TCP flows (${stats.attach}, ${stats.transport}, ${
      stats.seeded < 0 ? "no socket iterator" : `${stats.seeded} open sockets seeded`
    })`,
  );
  const stopped = terminationSignal();
  {
    await using _source = new FlowSource(agent, {
      timeoutMs: options.pollMs,
      onRecords: (bytes) => {
        const records = decodeFlows(bytes, clock.offsetNs());
        captured += records.length;
        for (const sink of sinks) sink(records);
      },
      onError: (err) => {
        failure = err;
        console.error(`flowexporter: ${err.message}`);
      },
    });
    await stopped;
  }
  const end = agent.stats();
  console.error(
    `flowexporter: stopped (records ${captured}, kernel drops ${end.kernelDrops}, recursion misses ${end.recursionMisses})`,
  );
  return failure ? 1 : 0;
}
