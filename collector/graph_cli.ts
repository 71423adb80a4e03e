/**
 * `flowexporter graph`: the workload dependency map (collector/graph.ts) of a collector's
 * database, opened read-only, or of a cluster's flows in ClickHouse, as JSON or in Graphviz's
 * DOT language.
 *
 * @example
 * ```sh
 * flowexporter graph --db flows.db --from 1h --workload checkout --format dot | dot -Tsvg > map.svg
 * ```
 *
 * @module
 */

import {
  buildGraph,
  DEFAULT_GRAPH_LIMIT,
  formatGraphDot,
  formatGraphJson,
  type Graph,
  type GraphRequest,
  MAX_GRAPH_DEPTH,
  nodeLabel,
  parseGraphRequest,
} from "./graph.ts";
import { ClickHouseStore } from "./cluster/clickhouse_store.ts";
import { SqliteGraphSource } from "./graph_sqlite.ts";
import {
  commandOptions,
  consoleOutput,
  type QueryOutput,
  READ_OPTIONS,
  READ_OPTIONS_HELP,
} from "./query.ts";

const HELP = `Usage: flowexporter graph [options]

Prints the workload dependency map of the flows a collector stored: one edge per (client ->
server) pair with flows, bytes each way, failed connects, resets and RTT p50/p99. Remote ends
without a workload are grouped: "unattributed: <address block>", "external", "ambiguous",
"pending". The collector's page at / draws the same map.

Options:
${READ_OPTIONS_HELP}  --clickhouse URL   the map of a cluster's flows in ClickHouse (http://host:8123) instead
  --workload ID      only the neighbourhood of workload ID
  --node NODE        only the neighbourhood of a node (workload:ID, unattributed:10.0.0.0/8,
                     external, ambiguous, pending, unidentified:HOST)
  --depth N          hops from the workload or node (default 1, at most ${MAX_GRAPH_DEPTH})
  --limit N          at most N edges, nearest and largest first (default ${DEFAULT_GRAPH_LIMIT}, 0 for all)
  --format FORMAT    json (default) or dot (Graphviz: flowexporter graph --format dot | dot -Tsvg)
  -h, --help         show this help
`;

/**
 * Runs `flowexporter graph` with `args` (the words after `graph`).
 *
 * @returns the exit code: 0 on success, 2 for bad arguments, 1 when the database cannot be read
 */
export async function runGraph(
  args: string[],
  io: QueryOutput = consoleOutput,
): Promise<number> {
  const values = commandOptions("graph", args, HELP, io, {
    ...READ_OPTIONS,
    clickhouse: { type: "string" },
    node: { type: "string" },
    depth: { type: "string" },
    limit: { type: "string" },
    format: { type: "string", default: "json" },
  });
  if (typeof values === "number") return values;
  if (values.format !== "json" && values.format !== "dot") {
    io.err(`Invalid format ${JSON.stringify(values.format)}: use json or dot`);
    return 2;
  }
  let request: GraphRequest;
  try {
    request = parseGraphRequest(values, BigInt(Date.now()) * 1_000_000n);
  } catch (error) {
    io.err((error as Error).message);
    return 2;
  }
  let graph: Graph;
  try {
    if (values.clickhouse !== undefined) {
      await using store = await ClickHouseStore.open(values.clickhouse, { readOnly: true });
      graph = buildGraph(await store.edgeStats(request), request);
    } else {
      using source = SqliteGraphSource.open(values.db);
      graph = buildGraph(await source.edgeStats(request), request);
    }
  } catch (error) {
    io.err((error as Error).message);
    return 1;
  }
  if (graph.focus !== null && graph.nodes.length === 0) {
    io.err(`No flows of ${nodeLabel(graph.focus)} in this time range (check --from and --to)`);
  }
  if (graph.truncated) {
    io.err(`Showing ${graph.edges.length} of ${graph.totalEdges} edges (raise --limit, 0 for all)`);
  }
  if (values.format === "json") io.out(formatGraphJson(graph));
  else for (const line of formatGraphDot(graph)) io.out(line);
  return 0;
}
