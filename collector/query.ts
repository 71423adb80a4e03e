/**
 * `flowexporter query`: lists stored flows with their remote attribution, from the collector's
 * database opened read-only, as a table or as JSON lines. The filters are shared with the
 * collector's `GET /v1/flows` endpoint.
 *
 * @example
 * ```sh
 * flowexporter query --db flows.db --from 15m --workload checkout --format json
 * ```
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { formatIp, parseIp } from "../lib/map_layout.ts";
import { formatFlowId, hasFlowId } from "../lib/flow_id.ts";
import { formatFlowJson } from "../lib/json_lines.ts";
import type { AttributionStatus } from "./attributor.ts";
import { DEFAULT_DB_PATH } from "./defaults.ts";
import { type FlowFilter, FlowStore, type StoredFlow, type WindowDelta } from "./store.ts";
import { ClickHouseStore } from "./cluster/clickhouse_store.ts";

/** A filter value cannot be used; the message names it and says what is accepted. */
export class FilterError extends Error {
  /** Creates the error; `message` is one sentence-case line. */
  constructor(message: string) {
    super(message);
    this.name = "FilterError";
  }
}

/** Filter values as text, as given on the command line or in a query string. */
export interface FilterText {
  /** Start of the time range: RFC 3339, ns since the epoch, or an age (`15m`). */
  from?: string;
  /** End of the time range (exclusive), same forms as `from`. */
  to?: string;
  /** Local or remote workload. */
  workload?: string;
  /** Local or remote address. */
  ip?: string;
  /** Reporting host. */
  host?: string;
  /** `attributed`, `pending`, `unattributed` or `ambiguous`. */
  status?: string;
  /** `open` (the latest record is interim) or `closed`. */
  state?: string;
  /** Most rows; 0 for no limit. */
  limit?: string;
}

/** Where {@linkcode runQuery} writes. */
export interface QueryOutput {
  /** One line of results (no newline). */
  out(line: string): void;
  /** One line of diagnostics (no newline). */
  err(line: string): void;
}

const STATUSES: readonly AttributionStatus[] = [
  "attributed",
  "pending",
  "unattributed",
  "ambiguous",
];
const AGE_UNITS: Record<string, bigint> = {
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
  d: 86_400_000_000_000n,
};

/** The `--help` lines of the database and time range options ({@linkcode READ_OPTIONS}). */
export const READ_OPTIONS_HELP =
  `  --db PATH          collector database (default ${DEFAULT_DB_PATH}), opened read-only
  --from TIME        flows that started at or after TIME
  --to TIME          flows that started before TIME
                     TIME: RFC 3339 (2026-01-01T12:00:00Z), ns since the epoch, or an age
                     such as 90s, 15m, 2h, 1d (that long before now)
`;

const HELP = `Usage: flowexporter query [options]

Lists the flows a collector stored, with the workload at the remote end, oldest first.

Options:
${READ_OPTIONS_HELP}  --clickhouse URL   read a cluster's flows from ClickHouse (http://host:8123) instead
  --workload ID      flows whose local or remote workload is ID
  --ip ADDRESS       flows whose local or remote address is ADDRESS
  --host NAME        flows reported by host NAME
  --status STATUS    attributed, pending, unattributed or ambiguous
  --state STATE      open (seen by interim records, not closed yet) or closed
  --per-window       what each batch window added to each flow: one row per interim
                     record of a long-lived flow and per close, --from and --to
                     applying to that record's time (not with --clickhouse)
  --limit N          at most N flows (default 1000, 0 for all)
  --format FORMAT    table (default) or json (one JSON object per line)
  -h, --help         show this help
`;

/**
 * Turns filter text into a {@linkcode FlowFilter}.
 *
 * @param nowNs the time ages count back from, ns since the epoch
 * @throws {FilterError} naming the first bad value
 */
export function parseFlowFilter(text: FilterText, nowNs: bigint): FlowFilter {
  const filter: FlowFilter = {};
  if (text.from !== undefined) filter.fromNs = parseTime(text.from, nowNs, "from");
  if (text.to !== undefined) filter.toNs = parseTime(text.to, nowNs, "to");
  if (text.workload !== undefined) filter.workload = text.workload;
  if (text.ip !== undefined) {
    try {
      filter.ip = formatIp(parseIp(text.ip));
    } catch (error) {
      throw new FilterError(`${(error as Error).message} (use a plain IPv4 or IPv6 address)`);
    }
  }
  if (text.host !== undefined) filter.hostname = text.host;
  if (text.status !== undefined) {
    if (!STATUSES.includes(text.status as AttributionStatus)) {
      throw new FilterError(
        `Invalid status ${JSON.stringify(text.status)}: use one of ${STATUSES.join(", ")}`,
      );
    }
    filter.attribution = text.status as AttributionStatus;
  }
  if (text.state !== undefined) {
    if (text.state !== "open" && text.state !== "closed") {
      throw new FilterError(`Invalid state ${JSON.stringify(text.state)}: use open or closed`);
    }
    filter.recordKind = text.state === "open" ? "interim" : "final";
  }
  if (text.limit !== undefined) {
    if (!/^[0-9]{1,9}$/.test(text.limit)) {
      throw new FilterError(
        `Invalid limit ${JSON.stringify(text.limit)}: use a whole number (0 for no limit)`,
      );
    }
    filter.limit = Number(text.limit) === 0 ? -1 : Number(text.limit);
  }
  return filter;
}

/**
 * One flow as a JSON object on one line: the agent's JSON fields of its latest record
 * (`lib/json_lines.ts`; `flow_id` and `bytes_retrans` are null for flows of wire schema 1 and 2)
 * plus `id`, `host`, `batch_sequence`, `state` (`open` while its latest record is interim, else
 * `closed`), `remote_workload_id` (null unless attributed) and `attribution`.
 */
export function formatStoredFlowJson(flow: StoredFlow): string {
  const base = formatFlowJson(flow);
  return `{"id":${flow.id},"host":${JSON.stringify(flow.hostname)},` +
    `"batch_sequence":${flow.batchSequence},${base.slice(1, -1)},` +
    `"state":"${flowState(flow)}",` +
    `"remote_workload_id":${JSON.stringify(flow.remoteWorkloadId)},` +
    `"attribution":"${flow.attribution}"}`;
}

/**
 * What one window added to one flow, as a JSON object on one line: `id`, `host`, `flow_id`,
 * `t_ns` (the record's time), `record_kind`, the flow's endpoints and workloads, its
 * `attribution`, and the counters the window added.
 */
export function formatWindowDeltaJson(d: WindowDelta): string {
  const f = d.flow;
  return `{"id":${f.id},"host":${JSON.stringify(f.hostname)},"flow_id":${
    hasFlowId(f) ? `"${formatFlowId(f.bootId, f.cookie)}"` : "null"
  },"t_ns":${d.tNs},"record_kind":"${d.recordKind}",` +
    `"local_ip":"${formatIp(f.localIp)}","local_port":${f.localPort},` +
    `"local_workload_id":${JSON.stringify(f.localWorkloadId)},` +
    `"remote_ip":"${formatIp(f.remoteIp)}","remote_port":${f.remotePort},` +
    `"remote_workload_id":${JSON.stringify(f.remoteWorkloadId)},` +
    `"attribution":"${f.attribution}","bytes_sent":${d.bytesSent},` +
    `"bytes_retrans":${d.bytesRetrans},"bytes_acked":${d.bytesAcked},` +
    `"bytes_received":${d.bytesReceived},"segs_out":${d.segsOut},"segs_in":${d.segsIn}}`;
}

/** What each window added, as an aligned text table, header first. */
export function formatWindowDeltaTable(deltas: readonly WindowDelta[]): string[] {
  return alignedTable([
    ["TIME (UTC)", "HOST", "LOCAL", "LOCAL WORKLOAD", "REMOTE", "REMOTE WORKLOAD", "RECORD"]
      .concat(["SENT", "RECEIVED", "FLOW ID"]),
    ...deltas.map((d) => {
      const f = d.flow;
      return [
        utcText(d.tNs),
        f.hostname,
        endpoint(f.localIp, f.localPort),
        f.localWorkloadId || "-",
        endpoint(f.remoteIp, f.remotePort),
        f.remoteWorkloadId ?? `(${f.attribution})`,
        d.recordKind,
        String(d.bytesSent),
        String(d.bytesReceived),
        hasFlowId(f) ? formatFlowId(f.bootId, f.cookie) : "-",
      ];
    }),
  ]);
}

/** `open` while a flow's latest record is interim, else `closed`. */
function flowState(flow: StoredFlow): "open" | "closed" {
  return flow.recordKind === "interim" ? "open" : "closed";
}

/**
 * The flows as an aligned text table, header first; `RETRANS` (bytes retransmitted) and
 * `FLOW ID` are `-` for flows of wire schema 1 and 2.
 */
export function formatFlowTable(flows: readonly StoredFlow[]): string[] {
  const rows = [[
    "START (UTC)",
    "DURATION",
    "HOST",
    "LOCAL",
    "LOCAL WORKLOAD",
    "DIR",
    "REMOTE",
    "REMOTE WORKLOAD",
    "END",
    "SENT",
    "RETRANS",
    "RECEIVED",
    "RTT",
    "FLOW ID",
  ]];
  for (const f of flows) {
    const known = hasFlowId(f);
    rows.push([
      utcText(f.tStartNs),
      formatDuration(f.tEndNs - f.tStartNs),
      f.hostname,
      endpoint(f.localIp, f.localPort),
      f.localWorkloadId || "-",
      f.direction === "outbound" ? "->" : f.direction === "inbound" ? "<-" : "?",
      endpoint(f.remoteIp, f.remotePort),
      f.remoteWorkloadId ?? `(${f.attribution})`,
      f.end,
      String(f.bytesSent),
      known ? String(f.bytesRetrans) : "-",
      String(f.bytesReceived),
      f.srttUs === 0 ? "-" : `${(f.srttUs / 1000).toFixed(2)}ms`,
      known ? formatFlowId(f.bootId, f.cookie) : "-",
    ]);
  }
  return alignedTable(rows);
}

function alignedTable(rows: readonly string[][]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c])).join("  ").trimEnd());
}

function utcText(ns: bigint): string {
  return new Date(Number(ns / 1_000_000n)).toISOString().replace("T", " ").slice(0, 23);
}

/**
 * Runs `flowexporter query` with `args` (the words after `query`).
 *
 * @param io where results and diagnostics go; standard output and error by default
 * @returns the exit code: 0 on success, 2 for bad arguments, 1 when the database cannot be read
 */
export async function runQuery(args: string[], io: QueryOutput = consoleOutput): Promise<number> {
  const values = commandOptions("query", args, HELP, io, {
    ...READ_OPTIONS,
    clickhouse: { type: "string" },
    ip: { type: "string" },
    host: { type: "string" },
    status: { type: "string" },
    state: { type: "string" },
    "per-window": { type: "boolean" },
    limit: { type: "string", default: "1000" },
    format: { type: "string", default: "table" },
  });
  if (typeof values === "number") return values;
  if (values.format !== "table" && values.format !== "json") {
    io.err(`Invalid format ${JSON.stringify(values.format)}: use table or json`);
    return 2;
  }
  let filter: FlowFilter;
  try {
    filter = parseFlowFilter(values, BigInt(Date.now()) * 1_000_000n);
  } catch (error) {
    io.err((error as Error).message);
    return 2;
  }
  if (values.clickhouse !== undefined && (values.state !== undefined || values["per-window"])) {
    io.err(
      "--state and --per-window read the SQLite collector's database: the cluster's ClickHouse tables keep closed flows only (drop --clickhouse)",
    );
    return 2;
  }
  if (values["per-window"]) {
    let deltas: WindowDelta[];
    try {
      using store = FlowStore.open(values.db, { readOnly: true });
      deltas = store.windowDeltas(filter);
    } catch (error) {
      io.err((error as Error).message);
      return 1;
    }
    if (values.format === "json") { for (const d of deltas) io.out(formatWindowDeltaJson(d)); }
    else for (const line of formatWindowDeltaTable(deltas)) io.out(line);
    return 0;
  }
  let flows: StoredFlow[];
  try {
    if (values.clickhouse !== undefined) {
      await using store = await ClickHouseStore.open(values.clickhouse, { readOnly: true });
      flows = await store.flows(filter);
    } else {
      using store = FlowStore.open(values.db, { readOnly: true });
      flows = store.flows(filter);
    }
  } catch (error) {
    io.err((error as Error).message);
    return 1;
  }
  if (values.format === "json") { for (const f of flows) io.out(formatStoredFlowJson(f)); }
  else for (const line of formatFlowTable(flows)) io.out(line);
  return 0;
}

/** The options of every command that reads the database: the file, the time range, a workload. */
export const READ_OPTIONS = {
  db: { type: "string", default: DEFAULT_DB_PATH },
  from: { type: "string" },
  to: { type: "string" },
  workload: { type: "string" },
} as const;

type OptionSpecs = NonNullable<ParseArgsConfig["options"]>;
type OptionValues<T extends OptionSpecs> = ReturnType<
  typeof parseArgs<{ args: string[]; strict: true; allowPositionals: false; options: T }>
>["values"];

/**
 * The options of a command that reads the collector's database (`query`, `graph`) and also
 * takes `-h`/`--help`: their values, or the exit code once the help (0) or what is wrong (2,
 * naming `flowexporter <command> --help`) is printed.
 */
export function commandOptions<T extends OptionSpecs>(
  command: string,
  args: string[],
  help: string,
  io: QueryOutput,
  options: T,
): OptionValues<T> | number {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: { ...options, help: { type: "boolean", short: "h" } },
    }));
  } catch (error) {
    io.err(`${(error as Error).message} (see flowexporter ${command} --help)`);
    return 2;
  }
  if (values.help === true) {
    for (const line of help.trimEnd().split("\n")) io.out(line);
    return 0;
  }
  return values as OptionValues<T>;
}

/** {@linkcode QueryOutput} to standard output and error. */
export const consoleOutput: QueryOutput = {
  out: (line) => console.log(line),
  err: (line) => console.error(line),
};

function parseTime(text: string, nowNs: bigint, name: string): bigint {
  if (/^[0-9]{1,19}$/.test(text)) return BigInt(text);
  const age = /^([0-9]{1,9})(ms|s|m|h|d)$/.exec(text);
  if (age !== null) return nowNs - BigInt(age[1]) * AGE_UNITS[age[2]];
  const ms =
    /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?$/i.test(text)
      ? Date.parse(text.replace(" ", "T"))
      : NaN;
  if (Number.isNaN(ms)) {
    throw new FilterError(
      `Invalid ${name} time ${
        JSON.stringify(text)
      }: use RFC 3339 (2026-01-01T12:00:00Z), ns since the epoch, or an age such as 15m`,
    );
  }
  return BigInt(ms) * 1_000_000n;
}

function formatDuration(ns: bigint): string {
  const ms = Number(ns) / 1e6;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 2 : 0)}ms`;
  return `${(ms / 1000).toFixed(ms < 60_000 ? 2 : 0)}s`;
}

function endpoint(ip: Uint8Array, port: number): string {
  const text = formatIp(ip);
  return ip.length === 16 ? `[${text}]:${port}` : `${text}:${port}`;
}
