/**
 * The collector's configuration: one table ({@linkcode COLLECTOR_OPTIONS}) describes every
 * option of `flowexporter collector` once; its flags, `FLOWEXPORTER_COLLECTOR_*` environment
 * variables, config file, `--help`, `flowexporter collector check` and the reference in
 * docs/collector.md all derive from it through lib/options.ts, as the agent's do from
 * cli/config.ts.
 *
 * Precedence: **flags > environment > config file > defaults**. The config file is JSON,
 * `{"hold_seconds": 300}`, named by `--config` or `FLOWEXPORTER_COLLECTOR_CONFIG`, else
 * `/etc/flowexporter/collector.json` when it exists.
 *
 * @example
 * ```ts
 * import { COLLECTOR_SCHEMA } from "./config.ts";
 * import { loadOptions } from "../lib/options.ts";
 * const args = ["--listen", ":9470"];
 * const config = loadOptions(COLLECTOR_SCHEMA, args, Deno.env.toObject(), Deno.readTextFileSync);
 * console.log(config.values.listen, config.sources.listen); // { hostname: "0.0.0.0", port: 9470 } "flag"
 * ```
 *
 * @module
 */

import { logOptions } from "../lib/log.ts";
import {
  boolean,
  bytes,
  httpUrl,
  integer,
  listen,
  optionalPath,
  path,
  urlList,
} from "../lib/option_kinds.ts";
import {
  checkSetTogether,
  ConfigError,
  configFileOption,
  type OptionSchema,
  optionsHelp,
  type OptionTable,
} from "../lib/options.ts";
import { DEFAULT_DB_PATH, DEFAULT_LIMITS, DEFAULT_PORT } from "./defaults.ts";

/** The config file read when neither `--config` nor `FLOWEXPORTER_COLLECTOR_CONFIG` names one. */
export const DEFAULT_COLLECTOR_CONFIG_FILE = "/etc/flowexporter/collector.json";

/** Prefix of the environment variables the collector reads; the agent leaves them alone. */
export const COLLECTOR_ENV_PREFIX = "FLOWEXPORTER_COLLECTOR_";

/**
 * Variables under {@linkcode COLLECTOR_ENV_PREFIX} that are the agent's options, not the
 * collector's (`collector_url`); tests/collector_config_test.ts holds this list to cli/config.ts.
 */
export const AGENT_ENV_UNDER_COLLECTOR_PREFIX: readonly string[] = ["FLOWEXPORTER_COLLECTOR_URL"];

const GiB = 1 << 30;

/** Every option of `flowexporter collector`, once. Names are the config file keys. */
export const COLLECTOR_OPTIONS = {
  config: configFileOption(DEFAULT_COLLECTOR_CONFIG_FILE, "general"),
  // Serving
  listen: listen({
    default: { hostname: "127.0.0.1", port: DEFAULT_PORT },
    help:
      "address to listen on: [::1]:PORT for IPv6, :PORT for every interface, port 0 for a free one",
    group: "serving",
  }),
  db: path({
    default: DEFAULT_DB_PATH,
    help: "SQLite database, created if missing",
    group: "serving",
  }),
  token_file: optionalPath({
    default: undefined,
    help: "file holding the bearer token exporters must send (empty: no token)",
    group: "serving",
  }),
  tls_cert: optionalPath({
    default: undefined,
    help: "PEM certificate: serve HTTPS (with tls_key; client certificates are not checked)",
    group: "serving",
  }),
  tls_key: optionalPath({
    default: undefined,
    help: "PEM private key of tls_cert",
    group: "serving",
  }),
  allow_unauthenticated: boolean({
    default: false,
    help: "without token_file, serve GET /v1/flows beyond loopback too (else 403)",
    group: "serving",
  }),
  // Limits
  max_body_bytes: bytes({
    default: DEFAULT_LIMITS.maxBodyBytes,
    min: 1,
    max: GiB,
    help: "largest request body, compressed (beyond: 413)",
    group: "limits",
  }),
  max_decompressed_bytes: bytes({
    default: DEFAULT_LIMITS.maxDecompressedBytes,
    min: 1,
    max: GiB,
    help: "largest body after decompression (beyond: 413)",
    group: "limits",
  }),
  max_batch_records: integer({
    default: DEFAULT_LIMITS.maxBatchRecords,
    help: "most flows in one batch, refused before any is decoded (beyond: 413)",
    group: "limits",
  }),
  max_pending_body_bytes: bytes({
    default: DEFAULT_LIMITS.maxPendingBodyBytes,
    min: 1,
    max: 16 * GiB,
    help: "compressed request bodies in memory at once, all requests together (beyond: 503)",
    group: "limits",
  }),
  max_concurrent_ingests: integer({
    default: DEFAULT_LIMITS.maxConcurrentIngests,
    help: "batches decompressed, decoded and stored at once (beyond: 503)",
    group: "limits",
  }),
  header_timeout_seconds: integer({
    default: DEFAULT_LIMITS.headerTimeoutSeconds,
    help: "time a client has to send a request's head, s (then 408)",
    group: "limits",
  }),
  body_timeout_seconds: integer({
    default: DEFAULT_LIMITS.bodyTimeoutSeconds,
    help: "time a client has to send a request's body after its head, s (then 408)",
    group: "limits",
  }),
  max_clock_skew_seconds: integer({
    default: DEFAULT_LIMITS.maxClockSkewSeconds,
    help: "how far past the collector's clock a window or flow may end, s (beyond: 400)",
    group: "limits",
  }),
  // Attribution
  hold_seconds: integer({
    default: 120,
    min: 0,
    help: "how long a flow waits for its remote owner's heartbeat, s",
    group: "attribution",
  }),
  max_held: integer({
    default: 100_000,
    min: 0,
    help: "most flows waiting at once (the oldest become unattributed first)",
    group: "attribution",
  }),
  merge_gap_seconds: integer({
    default: 30,
    min: 0,
    help: "heartbeats of one workload this close merge into one range, s",
    group: "attribution",
  }),
  slack_seconds: integer({
    default: 1,
    min: 0,
    help: "clock-skew tolerance around ownership ranges on lookup, s",
    group: "attribution",
  }),
  retention_seconds: integer({
    default: 3600,
    help: "how long ownership is remembered, s",
    group: "attribution",
  }),
  // Cluster (collector/cluster/)
  nats: urlList({
    default: [],
    schemes: ["nats:", "tls:"],
    emptyMeans: "for the embedded SQLite collector",
    help:
      "NATS JetStream servers: run as a stateless cluster node (db is then unused; see docs/cluster.md)",
    group: "cluster",
  }),
  clickhouse_url: httpUrl({
    default: undefined,
    emptyMeans: "for none",
    help: "ClickHouse HTTP interface: this node also stores flows there and serves GET /v1/flows",
    group: "cluster",
  }),
  nats_replicas: integer({
    default: 3,
    max: 5,
    help: "replicas of each stream the node creates (3 survives one server's loss)",
    group: "cluster",
  }),
  nats_partitions: integer({
    default: 1,
    min: 1,
    max: 64, // each is three streams with a consumer each, read by every node
    help:
      "partitions of the batch, held and output streams, one leader each; the same on every node",
    group: "cluster",
  }),
  nats_dedup_window_seconds: integer({
    default: 120,
    help: "JetStream's window for dropping a repeated batch (hostname:sequence), s",
    group: "cluster",
  }),
  hold_retry_ms: integer({
    default: 5000,
    min: 10,
    max: 600_000,
    help: "how often the cluster tries held flows again, ms",
    group: "cluster",
  }),
  ...logOptions("operations"),
} as const satisfies OptionTable;

/** The collector's schema: its options and how flags, environment and file name them. */
export const COLLECTOR_SCHEMA: OptionSchema<typeof COLLECTOR_OPTIONS> = {
  options: COLLECTOR_OPTIONS,
  groups: {
    general: "General",
    serving: "Serving",
    limits: "Limits",
    attribution: "Attribution",
    cluster: "Cluster",
    operations: "Operations",
  },
  envPrefix: COLLECTOR_ENV_PREFIX,
  foreignEnv: AGENT_ENV_UNDER_COLLECTOR_PREFIX,
  helpHint: "see flowexporter collector --help",
  configFile: { option: "config", default: DEFAULT_COLLECTOR_CONFIG_FILE },
  crossCheck: (config, origin) => {
    checkSetTogether(config, origin, ["tls_cert", "tls_key"], "HTTPS");
    if (config.values.clickhouseUrl !== undefined && config.values.nats.length === 0) {
      throw new ConfigError(
        `Invalid ${origin("clickhouse_url")}: ClickHouse is the cluster's store (set nats too)`,
      );
    }
  },
};

/** The options part of `flowexporter collector --help`, grouped, with each default. */
export const COLLECTOR_OPTIONS_HELP: string = optionsHelp(COLLECTOR_SCHEMA, "hold_seconds");
