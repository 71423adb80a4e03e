/**
 * `flowexporter collector`: runs the reference collector until SIGINT or SIGTERM, and
 * `flowexporter collector check`, which prints its effective configuration. The options are
 * collector/config.ts's.
 *
 * @example
 * ```sh
 * flowexporter collector --listen 127.0.0.1:9470 --db flows.db --token-file /etc/flowexporter/token
 * ```
 *
 * @module
 */

import { errorText } from "../lib/error_text.ts";
import { Log } from "../lib/log.ts";
import {
  checkOptions,
  type CommandOutput,
  loadOptionsOrExit,
  type OptionValues,
  pathUse,
  type ReadTextFile,
} from "../lib/options.ts";
import { withPath } from "../lib/unusable_path.ts";
import { COLLECTOR_OPTIONS, COLLECTOR_OPTIONS_HELP, COLLECTOR_SCHEMA } from "./config.ts";
import { startCollector } from "./server.ts";
import { startClusterNode } from "./cluster/node.ts";
import { checkCluster } from "./cluster/check.ts";
import type { StreamSettings } from "./cluster/streams.ts";

/** The `--help` text of `flowexporter collector`. */
export const COLLECTOR_HELP = `Usage: flowexporter collector [options]
       flowexporter collector check [options]

Receives flow batches from exporters (POST /v1/batches), attributes the remote end of each
flow to a workload from the other hosts' heartbeats, and stores them in SQLite. Query with
\`flowexporter query\` or GET /v1/flows. Stops cleanly on SIGINT or SIGTERM.

"check" prints the effective configuration as JSON instead: each option's value and where it
came from (flag, env, file or default). Exit status: 0 valid, 2 invalid (one line on stderr).
With --nats it also checks the cluster: NATS, the streams and consumers, and ClickHouse (one
line on stderr per problem; exit status 1 if there is any).

${COLLECTOR_OPTIONS_HELP}`;

const READABLE_FILE = "choose a readable file";
/** How the collector uses its paths: one it cannot use stops the start naming the option. */
const PATHS = {
  db: pathUse(COLLECTOR_SCHEMA, "db", "database", "choose a writable file"),
  tokenFile: pathUse(COLLECTOR_SCHEMA, "token_file", "token file", READABLE_FILE),
  tlsCert: pathUse(COLLECTOR_SCHEMA, "tls_cert", "TLS certificate", READABLE_FILE),
  tlsKey: pathUse(COLLECTOR_SCHEMA, "tls_key", "TLS key", READABLE_FILE),
};

/**
 * Opens each path once as the collector will, so that the error names the option instead of,
 * for the database, SQLite's "unable to open database file". The database is opened for
 * writing, created if missing and then removed again: a start that fails leaves nothing behind.
 */
function checkPaths(v: OptionValues<typeof COLLECTOR_OPTIONS>): void {
  // A cluster node keeps no database of its own.
  for (
    const [use, path] of [[PATHS.tokenFile, v.tokenFile], [PATHS.tlsCert, v.tlsCert], [
      PATHS.tlsKey,
      v.tlsKey,
    ]] as const
  ) {
    if (path !== undefined) withPath(use, path, () => Deno.readFileSync(path));
  }
  if (v.nats.length > 0) return;
  withPath(PATHS.db, v.db, () => {
    const existed = exists(v.db);
    Deno.openSync(v.db, { read: true, write: true, create: true }).close();
    if (!existed) Deno.removeSync(v.db);
  });
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * Runs `flowexporter collector` with `args` (the words after `collector`).
 *
 * @param args the options, after `check` for a configuration check
 * @param env the environment (`FLOWEXPORTER_COLLECTOR_*` options)
 * @param readFile reads the config file
 * @param out where the help, the check and the log lines go; default stdout and stderr
 * @returns the exit code: 0 after a clean stop, 2 for bad options, 1 when it cannot start
 */
export async function runCollector(
  args: string[],
  env: Record<string, string> = Deno.env.toObject(),
  readFile: ReadTextFile = Deno.readTextFileSync,
  out: CommandOutput = {
    stdout: (text) => console.log(text),
    stderr: (text) => console.error(text),
  },
): Promise<number> {
  const help = COLLECTOR_HELP;
  if (args[0] === "check") {
    const run = { args: args.slice(1), env, readFile, out, help };
    const code = checkOptions(COLLECTOR_SCHEMA, run);
    const loaded = code === 0 ? loadOptionsOrExit(COLLECTOR_SCHEMA, run) : code;
    if (typeof loaded === "number" || loaded.values.nats.length === 0) return code;
    const problems = await checkCluster({
      natsServers: loaded.values.nats,
      clickhouseUrl: loaded.values.clickhouseUrl,
      streams: streamSettings(loaded.values),
    });
    for (const problem of problems) out.stderr(problem);
    if (problems.length === 0) out.stderr("Cluster: streams, consumers and store as expected");
    return problems.length === 0 ? 0 : 1;
  }
  const config = loadOptionsOrExit(COLLECTOR_SCHEMA, { args, env, readFile, out, help });
  if (typeof config === "number") return config;
  const v = config.values;
  const log = new Log({
    format: v.logFormat,
    level: v.logLevel,
    write: (line) => out.stderr(line),
  });
  const serving = {
    ...v.listen,
    tokenFile: v.tokenFile,
    allowUnauthenticated: v.allowUnauthenticated,
    tlsCertFile: v.tlsCert,
    tlsKeyFile: v.tlsKey,
    maxBodyBytes: v.maxBodyBytes,
    maxDecompressedBytes: v.maxDecompressedBytes,
    maxBatchRecords: v.maxBatchRecords,
    maxPendingBodyBytes: v.maxPendingBodyBytes,
    maxConcurrentIngests: v.maxConcurrentIngests,
    headerTimeoutSeconds: v.headerTimeoutSeconds,
    bodyTimeoutSeconds: v.bodyTimeoutSeconds,
    maxClockSkewSeconds: v.maxClockSkewSeconds,
    holdSeconds: v.holdSeconds,
    maxHeld: v.maxHeld,
    mergeGapSeconds: v.mergeGapSeconds,
    slackSeconds: v.slackSeconds,
    retentionSeconds: v.retentionSeconds,
    logger: log.logger,
  };
  // Before the start: a SIGTERM while it starts stops the collector cleanly once it serves,
  // instead of killing it by the signal's default action before a listener exists.
  const stop = Promise.withResolvers<string>();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const listeners = signals.map((signal) => {
    const listener = () => stop.resolve(signal);
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  const unlisten = () => {
    for (const [s, listener] of listeners) Deno.removeSignalListener(s, listener);
  };
  let collector;
  try {
    checkPaths(v);
    collector = v.nats.length === 0
      ? await startCollector({ dbPath: v.db, ...serving })
      : await startClusterNode({
        ...serving,
        natsServers: [...v.nats],
        clickhouseUrl: v.clickhouseUrl,
        nodeName: `${Deno.hostname()}:${Deno.pid}`,
        streams: streamSettings(v),
        holdRetryMs: v.holdRetryMs,
      });
  } catch (error) {
    unlisten();
    log.error(errorText(error));
    return 1;
  }
  log.info(
    `collector listening on ${collector.url}`,
    v.nats.length === 0
      ? { db: v.db }
      : { nats: v.nats.join(","), clickhouse: v.clickhouseUrl ?? "" },
  );
  const signal = await stop.promise;
  unlisten();
  log.info("collector stopping", { signal });
  await collector.close();
  return 0;
}

/** The stream settings the collector options set. */
function streamSettings(
  v: {
    natsReplicas: number;
    natsPartitions: number;
    natsDedupWindowSeconds: number;
    retentionSeconds: number;
  },
): Partial<StreamSettings> {
  return {
    replicas: v.natsReplicas,
    partitions: v.natsPartitions,
    duplicateWindowSeconds: v.natsDedupWindowSeconds,
    retentionSeconds: v.retentionSeconds,
  };
}
