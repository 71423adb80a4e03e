/**
 * One cluster collector node for bench/cluster_bench.ts, as a process of its own (so that its
 * CPU time is its own): `_cluster_node.ts NATS_URLS CLICKHOUSE_URL WORK NAME PARTITIONS`, WORK a
 * comma-separated subset of `attribution,sink` or `none` (ingest only). Prints its URL on
 * stdout, then serves until SIGTERM.
 *
 * @module
 */

import { startClusterNode } from "../collector/cluster/node.ts";

const [nats, clickhouse, work, name, partitions] = Deno.args;
const node = await startClusterNode({
  natsServers: nats.split(","),
  clickhouseUrl: clickhouse,
  nodeName: name,
  port: 0,
  streams: { partitions: Number(partitions) },
  work: { attribution: work.includes("attribution"), sink: work.includes("sink") },
  logger: (level, message) => {
    if (level === "error" || level === "warn") console.error(`${name}: ${message}`);
  },
});
console.log(node.url);
const stop = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => stop.resolve());
await stop.promise;
await node.close();
Deno.exit(0);
