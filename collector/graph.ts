/**
 * The workload dependency map: who talks to whom over a time range, aggregated from the stored,
 * attributed flows. Served as `GET /v1/graph` (the collector's page at `/` draws it) and printed
 * by `flowexporter graph --format json|dot`.
 *
 * A node is a workload, or a group that stands for the remote ends no workload was found for,
 * so that no traffic is hidden:
 * - `workload:<id>`: a workload (local, or remote and attributed);
 * - `unidentified:<host>`: local ends of a host whose agent knew no workload for them;
 * - `unattributed:<block>`: unattributed remote addresses in a private or special block
 *   (`10.0.0.0/8`, `fc00::/7`, …, {@linkcode ADDRESS_BLOCKS});
 * - `external`: unattributed remote addresses anywhere else;
 * - `ambiguous`: remote ends two workloads claimed at the time;
 * - `pending`: remote ends still waiting for their owner's heartbeat.
 *
 * An edge runs from client to server, the way a dependency does: from the side that connected to
 * the side that accepted. Each connection counts once: an inbound flow whose client was
 * attributed is left out, since the client's host runs an agent and reported the same connection
 * as outbound. Edges carry flows, payload bytes each way (`bytes_acked` of the sender,
 * `bytes_received` of the receiver: the exact counts), failed connects (`refused`, `timeout`,
 * `failed`), resets (`reset`, `aborted`) and the median and 99th percentile of the flows'
 * smoothed RTT.
 *
 * The aggregation itself is a {@linkcode GraphSource}'s (SQL for SQLite, in
 * collector/graph_sqlite.ts); this module picks a neighbourhood, bounds the edge count and
 * formats the result.
 *
 * @example
 * ```sh
 * flowexporter graph --db flows.db --from 1h --workload checkout --depth 2 --format dot | dot -Tsvg > map.svg
 * curl -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:9470/v1/graph?from=1h&workload=checkout"
 * ```
 *
 * @module
 */

import type { FlowEnd } from "../lib/flow.ts";
import { parseIp } from "../lib/map_layout.ts";
import { FilterError, formatStoredFlowJson, parseFlowFilter } from "./query.ts";
import type { StoredFlow } from "./store.ts";

/** What a node stands for; see the module documentation. */
export type NodeKind =
  | "workload"
  | "unidentified"
  | "unattributed"
  | "external"
  | "ambiguous"
  | "pending";

/** Node IDs of the groups that have no name part. */
export const GROUP_NODES = {
  external: "external",
  ambiguous: "ambiguous",
  pending: "pending",
} as const;

/** The kinds whose node IDs are `<kind>:<name>`. */
const NAMED_KINDS = ["workload", "unidentified", "unattributed"] as const;

/**
 * Address blocks that unattributed remote addresses are grouped by: private, shared, loopback
 * and link-local space, where a peer is most likely a host without an agent. Any other
 * address is `external`.
 */
export const ADDRESS_BLOCKS: readonly string[] = [
  "10.0.0.0/8",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "fc00::/7",
  "fe80::/10",
  "::1/128",
];

/** Flow ends that count as a failed connect on an edge (lib/flow.ts's `FlowEnd`). */
export const FAILED_ENDS: readonly FlowEnd[] = ["refused", "timeout", "failed"];
/** Flow ends that count as a reset on an edge. */
export const RESET_ENDS: readonly FlowEnd[] = ["reset", "aborted"];

/** A time range: flows that started at or after `fromNs` and before `toNs` (both optional). */
export interface TimeRange {
  readonly fromNs?: bigint;
  readonly toNs?: bigint;
}

/** The aggregate of one (client node → server node) pair, as a {@linkcode GraphSource} gives it. */
export interface EdgeStats {
  /** Node ID of the client (the side that connected). */
  readonly source: string;
  /** Node ID of the server (the side that accepted). */
  readonly target: string;
  readonly flows: number;
  /** Payload bytes from client to server. */
  readonly bytesToTarget: number;
  /** Payload bytes from server to client. */
  readonly bytesToSource: number;
  /** Flows whose connect failed: `refused`, `timeout` or `failed`. */
  readonly failed: number;
  /** Flows that ended with a reset: `reset` or `aborted`. */
  readonly resets: number;
  /** Median smoothed RTT of the flows that measured one, µs; null when none did. */
  readonly rttP50Us: number | null;
  /** 99th percentile (nearest rank) of the same, µs; null when none did. */
  readonly rttP99Us: number | null;
}

/**
 * Where the graph's numbers come from: SQLite today (collector/graph_sqlite.ts), another store
 * later (asynchronous, for one reached over the network). Both calls see the flows the way
 * `GET /v1/flows` does (settlements and revocations applied), and follow the module
 * documentation's rules: node IDs, client → server, each connection once.
 */
export interface GraphSource {
  /** One aggregate per (client, server) node pair of the flows that started in `range`. */
  edgeStats(range: TimeRange): Promise<EdgeStats[]>;
  /** The latest flows of one edge that started in `range`, newest first, at most `limit`. */
  edgeFlows(source: string, target: string, range: TimeRange, limit: number): Promise<StoredFlow[]>;
}

/**
 * `source` with its {@linkcode GraphSource.edgeStats} kept for `ttlMs` per time range, counted
 * from the aggregation's end: the page asks for the same range again on every click (a node's
 * lists, an edge's flows), and an aggregation over a million flows takes seconds. Asks for the
 * range while its aggregation runs share it; a failed one is not kept. Flows stored meanwhile
 * show after `ttlMs`.
 *
 * @param nowMs a monotonic clock in ms; injectable for tests
 */
export function cachedGraphSource(
  source: GraphSource,
  ttlMs: number,
  nowMs: () => number = () => performance.now(),
): GraphSource {
  interface Entry {
    key: string;
    stats: Promise<EdgeStats[]>;
    /** When the aggregation ended; undefined while it runs. */
    doneMs?: number;
  }
  let last: Entry | undefined;
  return {
    edgeStats(range) {
      const key = `${range.fromNs}-${range.toNs}`;
      const stale = last === undefined || last.key !== key ||
        (last.doneMs !== undefined && nowMs() - last.doneMs > ttlMs);
      if (stale) {
        const entry: Entry = { key, stats: source.edgeStats(range) };
        entry.stats.then(() => entry.doneMs = nowMs(), () => {
          if (last === entry) last = undefined;
        });
        last = entry;
      }
      return last!.stats;
    },
    edgeFlows: (...args) => source.edgeFlows(...args),
  };
}

/** What to draw: a time range, and optionally the neighbourhood of one node. */
export interface GraphRequest extends TimeRange {
  /** Node ID whose neighbourhood is asked for; the whole graph when absent. */
  readonly focus?: string;
  /** Hops from `focus` (through workloads only: groups are not crossed). Default 1. */
  readonly depth?: number;
  /** Most edges returned, those nearest the focus and then the largest first; 0 for all. */
  readonly limit?: number;
}

/** A node of a {@linkcode Graph}. */
export interface GraphNode {
  readonly id: string;
  readonly kind: NodeKind;
  /** What a person reads: the workload ID, or the group's name (`unattributed: 10.0.0.0/8`). */
  readonly label: string;
  /** Hops from the focus; null without a focus. */
  readonly depth: number | null;
}

/** An edge of a {@linkcode Graph}: the aggregate and how to draw it. */
export interface GraphEdge extends EdgeStats {
  /** (failed + resets) / flows. */
  readonly failureRate: number;
  /** Line width for drawing, 1 to 8: grows with the log of the bytes both ways. */
  readonly width: number;
  /** Line colour for drawing (`#rrggbb`): green without failures, red from 50 % on. */
  readonly color: string;
}

/** The dependency map asked for. */
export interface Graph extends TimeRange {
  /** The focus node, when a neighbourhood was asked for. */
  readonly focus: string | null;
  readonly depth: number | null;
  readonly nodes: readonly GraphNode[];
  readonly edges: readonly GraphEdge[];
  /** Edges in the neighbourhood (or whole graph) before `limit`. */
  readonly totalEdges: number;
  /** True when `limit` left edges out. */
  readonly truncated: boolean;
  /** Every workload with flows in the range, sorted (for search). */
  readonly workloads: readonly string[];
}

/** Default of {@linkcode GraphRequest.limit} for `GET /v1/graph` and `flowexporter graph`. */
export const DEFAULT_GRAPH_LIMIT = 1000;
/** Largest depth accepted. */
export const MAX_GRAPH_DEPTH = 10;
/** Default and largest number of flows `GET /v1/graph/flows` returns. */
export const EDGE_FLOWS_LIMITS = { default: 50, max: 1000 } as const;

const INT64_MAX = (1n << 63n) - 1n;

/** `range` as the two bounds of a query on 64-bit start times, open ends as the extremes. */
export function rangeBounds(range: TimeRange): [bigint, bigint] {
  const clamp = (v: bigint) => v < -INT64_MAX ? -INT64_MAX : v > INT64_MAX ? INT64_MAX : v;
  return [clamp(range.fromNs ?? -INT64_MAX), clamp(range.toNs ?? INT64_MAX)];
}

/**
 * {@linkcode EdgeStats.rttP50Us} and {@linkcode EdgeStats.rttP99Us} of an edge's measured RTTs
 * (nearest rank; any order), null without any.
 */
function rttPercentiles(
  rtts: readonly number[],
): Pick<EdgeStats, "rttP50Us" | "rttP99Us"> {
  if (rtts.length === 0) return { rttP50Us: null, rttP99Us: null };
  const sorted = Float64Array.from(rtts).sort();
  const nearestRank = (p: number) => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
  return { rttP50Us: nearestRank(0.5), rttP99Us: nearestRank(0.99) };
}

/**
 * The {@linkcode EdgeStats} of an aggregated row as both sources' queries name its columns
 * (`client`, `server`, `flows`, `to_server`, `to_client`, `failed`, `resets`), with the edge's
 * measured RTTs.
 */
export function edgeStatsOfRow(r: Record<string, unknown>, rtts: readonly number[]): EdgeStats {
  return {
    source: r.client as string,
    target: r.server as string,
    flows: Number(r.flows),
    bytesToTarget: Number(r.to_server),
    bytesToSource: Number(r.to_client),
    failed: Number(r.failed),
    resets: Number(r.resets),
    ...rttPercentiles(rtts),
  };
}

/** The node ID of a workload. */
export function workloadNode(workloadId: string): string {
  return `workload:${workloadId}`;
}

/** The kind of a node ID; throws {@linkcode FilterError} for an ID of no known kind. */
export function nodeKind(id: string): NodeKind {
  for (const kind of NAMED_KINDS) {
    if (id.startsWith(`${kind}:`) && id.length > kind.length + 1) return kind;
  }
  if (Object.hasOwn(GROUP_NODES, id)) return id as NodeKind;
  throw new FilterError(
    `Invalid node ${
      JSON.stringify(id)
    }: use workload:ID, unidentified:HOST, unattributed:BLOCK, external, ambiguous or pending`,
  );
}

/** What a person reads for a node ID: `checkout`, `unattributed: 10.0.0.0/8`, `external`. */
export function nodeLabel(id: string): string {
  const kind = nodeKind(id);
  const name = id.slice(kind.length + 1);
  return kind === "workload" ? name : name === "" ? kind : `${kind}: ${name}`;
}

/** One of {@linkcode ADDRESS_BLOCKS} parsed: its address bytes (4 or 16) and prefix length. */
export interface AddressBlock {
  readonly cidr: string;
  readonly bytes: Uint8Array;
  readonly bits: number;
}

/** {@linkcode ADDRESS_BLOCKS}, parsed, in order: the first that holds an address is its group. */
export const BLOCKS: readonly AddressBlock[] = ADDRESS_BLOCKS.map((cidr) => {
  const [ip, bits] = cidr.split("/");
  return { cidr, bytes: parseIp(ip), bits: Number(bits) };
});

/**
 * The group node of an unattributed remote address (canonical text, as stored):
 * `unattributed:<block>` inside one of {@linkcode ADDRESS_BLOCKS}, else `external`. An
 * IPv4-mapped IPv6 address counts as its IPv4 address.
 */
export function addressGroup(ip: string): string {
  let bytes = parseIp(ip);
  if (bytes.length === 16 && bytes.subarray(0, 12).every((b, i) => b === (i < 10 ? 0 : 0xff))) {
    bytes = bytes.subarray(12);
  }
  for (const block of BLOCKS) {
    if (block.bytes.length === bytes.length && inBlock(bytes, block)) {
      return `unattributed:${block.cidr}`;
    }
  }
  return GROUP_NODES.external;
}

function inBlock(bytes: Uint8Array, block: AddressBlock): boolean {
  const whole = block.bits >> 3;
  for (let i = 0; i < whole; i++) if (bytes[i] !== block.bytes[i]) return false;
  const rest = block.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (bytes[whole] & mask) === (block.bytes[whole] & mask);
}

/**
 * The dependency map of `request` from the aggregates of its time range: the neighbourhood of
 * the focus (breadth first, crossing workloads and unidentified hosts but not groups, which
 * would join unrelated workloads; the edges with an end nearer than `depth` hops), or the whole
 * graph; then at most `limit` edges, nearest the focus first, then most bytes. A focus without
 * flows in the range gives an empty graph.
 */
export function buildGraph(stats: readonly EdgeStats[], request: GraphRequest): Graph {
  const workloads = new Set<string>();
  for (const e of stats) {
    for (const id of [e.source, e.target]) {
      if (id.startsWith("workload:")) workloads.add(id.slice("workload:".length));
    }
  }
  const focus = request.focus ?? null;
  let depthOf: Map<string, number> | null = null;
  let edges = stats;
  if (focus !== null) {
    depthOf = neighbourhood(stats, focus, request.depth ?? 1);
    const near = depthOf;
    const depth = request.depth ?? 1;
    // Edges among the outermost nodes lead out of the neighbourhood: left out.
    edges = stats.filter((e) =>
      near.has(e.source) && near.has(e.target) && edgeDepth(e, near) < depth
    );
  }
  const order = [...edges].sort((a, b) =>
    (depthOf === null ? 0 : edgeDepth(a, depthOf) - edgeDepth(b, depthOf)) ||
    (b.bytesToTarget + b.bytesToSource) - (a.bytesToTarget + a.bytesToSource) ||
    b.flows - a.flows ||
    a.source.localeCompare(b.source) || a.target.localeCompare(b.target)
  );
  const limit = request.limit ?? DEFAULT_GRAPH_LIMIT;
  const kept = limit > 0 ? order.slice(0, limit) : order;
  const ids = new Set<string>();
  if (focus !== null && depthOf!.has(focus)) ids.add(focus);
  for (const e of kept) ids.add(e.source).add(e.target);
  const maxBytes = Math.max(0, ...kept.map((e) => e.bytesToTarget + e.bytesToSource));
  return {
    fromNs: request.fromNs,
    toNs: request.toNs,
    focus,
    depth: focus === null ? null : request.depth ?? 1,
    nodes: [...ids].sort().map((id) => ({
      id,
      kind: nodeKind(id),
      label: nodeLabel(id),
      depth: depthOf?.get(id) ?? null,
    })),
    edges: kept.map((e) => drawn(e, maxBytes)),
    totalEdges: edges.length,
    truncated: kept.length < edges.length,
    workloads: [...workloads].sort(),
  };
}

/** Hops from `focus` to each node within `depth`, crossing only nodes a workload stands behind. */
function neighbourhood(
  stats: readonly EdgeStats[],
  focus: string,
  depth: number,
): Map<string, number> {
  const adjacent = new Map<string, string[]>();
  const link = (a: string, b: string) => {
    const list = adjacent.get(a);
    if (list === undefined) adjacent.set(a, [b]);
    else list.push(b);
  };
  for (const e of stats) {
    link(e.source, e.target);
    link(e.target, e.source);
  }
  const depthOf = new Map<string, number>();
  if (!adjacent.has(focus)) return depthOf;
  depthOf.set(focus, 0);
  let frontier = [focus];
  for (let hop = 1; hop <= depth && frontier.length > 0; hop++) {
    const next: string[] = [];
    for (const id of frontier) {
      if (id !== focus && !crossable(id)) continue;
      for (const other of adjacent.get(id)!) {
        if (depthOf.has(other)) continue;
        depthOf.set(other, hop);
        next.push(other);
      }
    }
    frontier = next;
  }
  return depthOf;
}

function crossable(id: string): boolean {
  return id.startsWith("workload:") || id.startsWith("unidentified:");
}

function edgeDepth(e: EdgeStats, depthOf: Map<string, number>): number {
  return Math.min(depthOf.get(e.source)!, depthOf.get(e.target)!);
}

/** Failure colours: at 0 %, at 10 % and from 50 % of flows failed or reset. */
const FAILURE_SCALE: readonly [number, [number, number, number]][] = [
  [0, [0x3f, 0x9b, 0x6a]],
  [0.1, [0xe0, 0xa0, 0x30]],
  [0.5, [0xd4, 0x3d, 0x3d]],
];

function drawn(e: EdgeStats, maxBytes: number): GraphEdge {
  const failureRate = e.flows === 0 ? 0 : (e.failed + e.resets) / e.flows;
  const bytes = e.bytesToTarget + e.bytesToSource;
  const width = maxBytes === 0 ? 1 : 1 + 7 * Math.log1p(bytes) / Math.log1p(maxBytes);
  return {
    ...e,
    failureRate,
    width: Math.round(width * 100) / 100,
    color: failureColor(failureRate),
  };
}

/** The colour of a failure rate on {@linkcode FAILURE_SCALE}, interpolated. */
export function failureColor(rate: number): string {
  let i = 1;
  while (i < FAILURE_SCALE.length - 1 && rate > FAILURE_SCALE[i][0]) i++;
  const [r0, c0] = FAILURE_SCALE[i - 1];
  const [r1, c1] = FAILURE_SCALE[i];
  const t = Math.min(1, Math.max(0, (rate - r0) / (r1 - r0)));
  return "#" +
    c0.map((c, k) => Math.round(c + (c1[k] - c) * t).toString(16).padStart(2, "0")).join("");
}

/**
 * The graph as JSON (one object, the body of `GET /v1/graph`): `from_ns`, `to_ns` (exact
 * integers or null), `focus`, `depth`, `nodes` (`id`, `kind`, `label`, `depth`), `edges`
 * (`source`, `target`, `flows`, `bytes_to_target`, `bytes_to_source`, `failed`, `resets`,
 * `failure_rate`, `rtt_p50_us`, `rtt_p99_us`, `width`, `color`), `total_edges`, `truncated`
 * and `workloads`.
 */
export function formatGraphJson(graph: Graph): string {
  const ns = (v: bigint | undefined) => v === undefined ? "null" : String(v);
  const edges = graph.edges.map((e) =>
    JSON.stringify({
      source: e.source,
      target: e.target,
      flows: e.flows,
      bytes_to_target: e.bytesToTarget,
      bytes_to_source: e.bytesToSource,
      failed: e.failed,
      resets: e.resets,
      failure_rate: Math.round(e.failureRate * 10_000) / 10_000,
      rtt_p50_us: e.rttP50Us,
      rtt_p99_us: e.rttP99Us,
      width: e.width,
      color: e.color,
    })
  );
  // Built by hand around the arrays: ns times exceed 2^53, which JSON.stringify cannot write.
  return `{"from_ns":${ns(graph.fromNs)},"to_ns":${ns(graph.toNs)},` +
    `"focus":${JSON.stringify(graph.focus)},"depth":${JSON.stringify(graph.depth)},` +
    `"nodes":[${graph.nodes.map((n) => JSON.stringify(n)).join(",\n")}],\n` +
    `"edges":[${edges.join(",\n")}],\n` +
    `"total_edges":${graph.totalEdges},"truncated":${graph.truncated},` +
    `"workloads":${JSON.stringify(graph.workloads)}}`;
}

const GROUP_STYLE = 'shape=ellipse, style=dashed, color="#777777", fontcolor="#555555"';

/**
 * The graph in Graphviz's DOT language: one node per node (groups dashed), one edge per edge
 * labelled with its flows, bytes each way, failures and RTT, as wide and as coloured as on the
 * page.
 */
export function formatGraphDot(graph: Graph): string[] {
  const lines = [
    "digraph flows {",
    '  graph [rankdir=LR, fontname="sans-serif"];',
    '  node [shape=box, style=rounded, fontname="sans-serif"];',
    '  edge [fontname="sans-serif", fontsize=10];',
  ];
  for (const n of graph.nodes) {
    const style = n.kind === "workload" ? "" : `, ${GROUP_STYLE}`;
    const focus = n.id === graph.focus ? ", penwidth=2" : "";
    lines.push(`  ${dotString(n.id)} [label=${dotString(n.label)}${style}${focus}];`);
  }
  for (const e of graph.edges) {
    const label = [
      `${e.flows} flows`,
      `${formatBytes(e.bytesToTarget)} / ${formatBytes(e.bytesToSource)}`,
      ...(e.failed + e.resets > 0 ? [`${e.failed} failed, ${e.resets} resets`] : []),
      ...(e.rttP50Us === null ? [] : [`RTT ${formatRtt(e.rttP50Us)} / ${formatRtt(e.rttP99Us!)}`]),
    ].join("\\n");
    lines.push(
      `  ${dotString(e.source)} -> ${dotString(e.target)} ` +
        `[label="${label}", penwidth=${e.width}, color="${e.color}"];`,
    );
  }
  lines.push("}");
  return lines;
}

function dotString(text: string): string {
  return `"${text.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

/** Bytes with a decimal unit and three digits at most: `950 B`, `12.3 kB`, `4.1 MB`. */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${Number(v.toPrecision(3))} ${units[i]}`;
}

function formatRtt(us: number): string {
  return us < 1000 ? `${us}µs` : `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)}ms`;
}

/** Graph parameters as text, as given on the command line or in a query string. */
export interface GraphText {
  /** Start of the range (the forms of `flowexporter query --from`). */
  from?: string;
  /** End of the range (exclusive). */
  to?: string;
  /** Workload whose neighbourhood is asked for. */
  workload?: string;
  /** Any node whose neighbourhood is asked for (`unattributed:10.0.0.0/8`); not with `workload`. */
  node?: string;
  /** Hops from the workload or node, 0 to {@linkcode MAX_GRAPH_DEPTH}. */
  depth?: string;
  /** Most edges, 0 for all. */
  limit?: string;
}

/**
 * Turns graph parameters into a {@linkcode GraphRequest}.
 *
 * @param nowNs the time ages count back from, ns since the epoch
 * @throws {FilterError} naming the first bad value
 */
export function parseGraphRequest(text: GraphText, nowNs: bigint): GraphRequest {
  const range = parseFlowFilter({ from: text.from, to: text.to }, nowNs);
  if (text.workload !== undefined && text.node !== undefined) {
    throw new FilterError("Give workload or node, not both");
  }
  let focus: string | undefined;
  if (text.workload !== undefined) {
    if (text.workload === "") throw new FilterError('Invalid workload "": name one');
    focus = workloadNode(text.workload);
  } else if (text.node !== undefined) {
    nodeKind(text.node);
    focus = text.node;
  }
  const depth = text.depth === undefined
    ? undefined
    : wholeNumber(text.depth, "depth", MAX_GRAPH_DEPTH);
  const limit = text.limit === undefined ? undefined : wholeNumber(text.limit, "limit", 1e9);
  return { fromNs: range.fromNs, toNs: range.toNs, focus, depth, limit };
}

function wholeNumber(text: string, name: string, max: number): number {
  if (!/^[0-9]{1,10}$/.test(text) || Number(text) > max) {
    throw new FilterError(
      `Invalid ${name} ${JSON.stringify(text)}: use a whole number from 0 to ${max}`,
    );
  }
  return Number(text);
}

/**
 * The body of `GET /v1/graph` (with `params` its query string) or of `GET /v1/graph/flows`
 * (`source`, `target`, `from`, `to`, `limit`: the edge's latest flows as a JSON array of the
 * objects of `GET /v1/flows`, newest first).
 *
 * @throws {FilterError} for a bad parameter (the server answers 400)
 */
export async function graphResponse(
  path: "/v1/graph" | "/v1/graph/flows",
  params: URLSearchParams,
  source: GraphSource,
  nowNs: bigint,
): Promise<string> {
  const text = (names: readonly string[]) => {
    const values: Record<string, string> = {};
    for (const name of names) {
      const value = params.get(name);
      if (value !== null) values[name] = value;
    }
    return values;
  };
  if (path === "/v1/graph") {
    const request = parseGraphRequest(
      text(["from", "to", "workload", "node", "depth", "limit"]),
      nowNs,
    );
    return formatGraphJson(buildGraph(await source.edgeStats(request), request)) + "\n";
  }
  const given = text(["source", "target", "from", "to", "limit"]);
  if (given.source === undefined || given.target === undefined) {
    throw new FilterError("Name the edge: give source and target (node IDs of GET /v1/graph)");
  }
  nodeKind(given.source);
  nodeKind(given.target);
  const range = parseFlowFilter({ from: given.from, to: given.to }, nowNs);
  const limit = given.limit === undefined
    ? EDGE_FLOWS_LIMITS.default
    : wholeNumber(given.limit, "limit", EDGE_FLOWS_LIMITS.max);
  const flows = await source.edgeFlows(given.source, given.target, range, limit);
  return `[${flows.map(formatStoredFlowJson).join(",\n")}]\n`;
}
