/**
 * `flowexporter dev` (`deno task dev`): the agent and a local reference
 * collector together against the local kernel, everything under build/dev/.
 *
 * @module
 */
import { startCollector } from "../collector/server.ts";
import { startLocalCluster } from "../collector/cluster/local_cluster.ts";
import { startClusterNode } from "../collector/cluster/node.ts";
import { run } from "./run.ts";
import { type Config, loadConfig } from "./config.ts";

/** Where `dev` keeps its database, spool and lock. */
export const DEV_DIR = new URL("../build/dev/", import.meta.url).pathname;

/**
 * Starts a collector on 127.0.0.1 (a free port), then the agent shipping
 * 10-second batches to it; `args` are `run` options and override these. With `--cluster`
 * first, the collector is a cluster node on a local NATS cluster and ClickHouse
 * (collector/cluster/local_cluster.ts; `make cluster-deps` installs the servers).
 */
export async function runDev(args: string[]): Promise<number> {
  await Deno.mkdir(DEV_DIR, { recursive: true });
  if (args[0] === "--cluster") return await runDevCluster(args.slice(1));
  await using collector = await startCollector({ dbPath: `${DEV_DIR}flows.db`, port: 0 });
  console.error(
    `flowexporter dev: collector at ${collector.url}; see attributed flows with: ` +
      `deno run -A main.ts query --db ${DEV_DIR}flows.db`,
  );
  return await runAgent(collector.url, args);
}

/** The agent, shipping to the collector at `collectorUrl`, with `args` over dev's defaults. */
async function runAgent(collectorUrl: string, args: string[]): Promise<number> {
  const defaults = [
    "--collector-url",
    `${collectorUrl}/v1/batches`,
    "--spool-dir",
    `${DEV_DIR}spool`,
    "--lock-file",
    `${DEV_DIR}lock`,
    "--batch-interval",
    "10s",
    "--output",
    "json",
  ];
  const config: Config = loadConfig([...defaults, ...args], Deno.env.toObject()).values;
  return await run(config);
}

async function runDevCluster(args: string[]): Promise<number> {
  await using cluster = await startLocalCluster();
  await using node = await startClusterNode({
    natsServers: cluster.natsUrls,
    clickhouseUrl: cluster.clickhouseUrl,
    port: 0,
  });
  console.error(
    `flowexporter dev: cluster node at ${node.url} (NATS ${cluster.natsUrls.join(",")}); see ` +
      `attributed flows with: deno run -A main.ts query --clickhouse ${cluster.clickhouseUrl}`,
  );
  return await runAgent(node.url, args);
}
