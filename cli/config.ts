/**
 * The agent's configuration: one table ({@linkcode OPTIONS}) describes every option once;
 * flags, environment variables, the config file, `--help` and the reference in
 * docs/operations.md all derive from it through lib/options.ts.
 *
 * Precedence, one rule for every option: **flags > environment > config file > defaults**.
 *
 * - Flag: `--ring-bytes 8MiB` (the option name with `-` for `_`); switches take no value or
 *   `=true`/`=false` (`--perf-buffer=false` overrides a file that sets it).
 * - Environment: `FLOWEXPORTER_RING_BYTES=8MiB` (`FLOWEXPORTER_` + the name in upper case);
 *   `FLOWEXPORTER_COLLECTOR_*` belongs to the collector (collector/config.ts) and is left alone.
 * - Config file: JSON, `{"ring_bytes": "8MiB"}`; its path comes from `--config` or
 *   `FLOWEXPORTER_CONFIG`, else `/etc/flowexporter/config.json` is read when it exists.
 *
 * Unknown names and bad values stop the agent with one line naming the key and its source.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * const config = loadConfig(Deno.args, Deno.env.toObject());
 * console.log(config.values.ringBytes, config.sources.ringBytes); // 8388608 "default"
 * ```
 *
 * @module
 */

import { MAPS_PIN_DIR } from "../lib/map_layout.ts";
import { DEFAULT_CERT_PATH, DEFAULT_ID_RULE, ID_RULES } from "../identity/host_identity.ts";
import {
  DEFAULT_INTERVAL_MS,
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_RECORDS,
  MAX_BYTE_CAP,
  MAX_INTERVAL_MS,
  MIN_BYTE_CAP,
  MIN_INTERVAL_MS,
} from "../lib/batcher.ts";
import { DEFAULT_FLOWS_MAX, DEFAULT_RING_BYTES } from "../lib/capture_sizes.ts";
import {
  BODY_CODINGS,
  type BodyCoding,
  DEFAULT_BODY_CODING,
  DEFAULT_GZIP_LEVEL,
} from "../lib/body_coding.ts";
import { logOptions } from "../lib/log.ts";
import { DEFAULT_SPOOL_BYTES } from "../lib/spool.ts";
import {
  boolean,
  bytes,
  choice,
  duration,
  httpUrl,
  integer,
  isLoopbackHost,
  optionalDuration,
  optionalListen,
  optionalPath,
  path,
  showListen,
} from "../lib/option_kinds.ts";
import {
  checkOptions,
  checkSetTogether,
  type CommandOutput,
  ConfigError,
  configFileOption,
  type DescribedOptions,
  describeOptions,
  type LoadedOptions,
  loadOptions,
  type OptionSchema,
  optionsHelp,
  type OptionTable,
  type OptionValues,
  type ReadTextFile,
} from "../lib/options.ts";
import { COLLECTOR_ENV_PREFIX } from "../collector/config.ts";

/** The config file read when neither `--config` nor `FLOWEXPORTER_CONFIG` names one. */
export const DEFAULT_CONFIG_FILE = "/etc/flowexporter/config.json";
/** Prefix of the environment variables the agent reads. */
export const ENV_PREFIX = "FLOWEXPORTER_";
/**
 * `FLOWEXPORTER_*` variables that are not options: the native library path (ffi/symbols.ts) and
 * the arguments the systemd unit passes (packaging/flowexporter.service).
 */
export const NON_OPTION_ENV: readonly string[] = ["FLOWEXPORTER_LIB", "FLOWEXPORTER_ARGS"];

/** Every option, once. Names are the config file keys. */
export const OPTIONS = {
  config: configFileOption(DEFAULT_CONFIG_FILE, "general"),
  // Capture
  output: choice(["auto", "json", "none"], {
    default: "auto",
    help: "stdout: one JSON object per flow, or nothing; auto: JSON unless a collector is set",
    group: "capture",
  }),
  pin_dir: path({
    default: MAPS_PIN_DIR,
    help: "bpffs directory of the pinned identity maps",
    group: "capture",
    arg: "DIR",
  }),
  perf_buffer: boolean({
    default: false,
    help: "use the perf buffer instead of the ring buffer",
    group: "capture",
  }),
  cgroup_path: optionalPath({
    default: "auto",
    help:
      "cgroup v2 directory sock_ops follows sockets in (auto: the v2 root; empty: tracepoints only)",
    group: "capture",
    arg: "DIR",
  }),
  no_seed: boolean({
    default: false,
    help: "do not seed sockets that are already open",
    group: "capture",
  }),
  ring_bytes: bytes({
    default: DEFAULT_RING_BYTES,
    min: 4096,
    max: 1 << 30,
    powerOfTwo: true,
    help: "kernel buffer size, a power of two",
    group: "capture",
  }),
  flows_max: integer({
    default: DEFAULT_FLOWS_MAX,
    max: 0xffffffff,
    help: "open sockets tracked at once",
    group: "capture",
  }),
  poll_ms: integer({
    default: 100,
    max: 60_000,
    help: "longest delay before records are drained, ms",
    group: "capture",
  }),
  verbose: boolean({
    default: false,
    help: "keep libbpf's debug output for load errors",
    group: "capture",
  }),
  // Shipping
  collector_url: httpUrl({
    default: undefined,
    emptyMeans: "to keep batches in the spool only",
    help: "collector endpoint (empty: batches stay in the spool)",
    group: "shipping",
  }),
  spool_dir: path({
    default: "/var/lib/flowexporter/spool",
    help: "where batches wait until the collector has them",
    group: "shipping",
    arg: "DIR",
  }),
  spool_max_bytes: bytes({
    default: DEFAULT_SPOOL_BYTES,
    min: 64 << 10,
    max: 2 ** 40,
    help: "cap on the spool's size; the oldest batches go first",
    group: "shipping",
  }),
  batch_interval: duration({
    default: DEFAULT_INTERVAL_MS,
    min: MIN_INTERVAL_MS,
    max: MAX_INTERVAL_MS,
    help: "batch window, aligned to the wall clock",
    group: "shipping",
  }),
  interim_interval: optionalDuration({
    default: undefined,
    min: 0,
    max: 86_400_000,
    emptyMeans: "for the batch interval",
    help:
      "at each batch window's end, an interim record of every socket open longer than this (empty: the batch interval; 0: none)",
    group: "shipping",
  }),
  batch_max_records: integer({
    default: DEFAULT_MAX_RECORDS,
    help: "flows per batch before its window closes early",
    group: "shipping",
  }),
  batch_max_bytes: bytes({
    default: DEFAULT_MAX_BYTES,
    min: MIN_BYTE_CAP,
    max: MAX_BYTE_CAP,
    help: "encoded flow bytes per batch before its window closes early",
    group: "shipping",
  }),
  compression: choice(Object.keys(BODY_CODINGS) as BodyCoding[], {
    default: DEFAULT_BODY_CODING,
    help: "coding of batch bodies: zstd costs a third of gzip's CPU; gzip for old collectors",
    group: "shipping",
  }),
  gzip_level: integer({
    default: DEFAULT_GZIP_LEVEL,
    max: 9,
    help: "gzip level of batches (compression gzip): 1 costs half the CPU of 3 for 16 % more bytes",
    group: "shipping",
  }),
  token_file: optionalPath({
    default: undefined,
    help: "file holding the collector's bearer token (re-read when it changes)",
    group: "shipping",
  }),
  client_cert: optionalPath({
    default: undefined,
    help: "PEM client certificate for mutual TLS (with client_key)",
    group: "shipping",
  }),
  client_key: optionalPath({
    default: undefined,
    help: "PEM private key of client_cert",
    group: "shipping",
  }),
  ca_file: optionalPath({
    default: undefined,
    help: "PEM CA certificates trusted besides the system roots",
    group: "shipping",
  }),
  shutdown_deadline: duration({
    default: 10_000,
    min: 0,
    max: 600_000,
    help: "how long the last batches may take to send at stop",
    group: "shipping",
  }),
  // Identity
  cert_path: path({
    default: DEFAULT_CERT_PATH,
    help: "host identity certificate (PEM)",
    group: "identity",
  }),
  id_rule: choice(ID_RULES, {
    default: DEFAULT_ID_RULE,
    help: "which certificate name is the workload ID",
    group: "identity",
  }),
  // Operations
  metrics_listen: optionalListen({
    default: undefined,
    help: "serve /metrics and /healthz here (empty: off; loopback only by default)",
    group: "operations",
  }),
  metrics_allow_remote: boolean({
    default: false,
    help: "allow metrics_listen on a non-loopback address",
    group: "operations",
  }),
  ...logOptions("operations"),
  lock_file: path({
    default: "/run/flowexporter.lock",
    help: "lock that keeps a second agent from starting on this host",
    group: "operations",
  }),
} as const satisfies OptionTable;

/** The effective values, keyed in camelCase (`ringBytes`); durations are ms. */
export type Config = OptionValues<typeof OPTIONS>;

/** The result of {@linkcode loadConfig}. */
export type EffectiveConfig = LoadedOptions<typeof OPTIONS>;

/** The agent's schema: its options and how flags, environment and file name them. */
export const CONFIG_SCHEMA: OptionSchema<typeof OPTIONS> = {
  options: OPTIONS,
  groups: {
    general: "General",
    capture: "Capture",
    shipping: "Shipping",
    identity: "Identity",
    operations: "Operations",
  },
  envPrefix: ENV_PREFIX,
  foreignEnv: NON_OPTION_ENV,
  foreignEnvPrefixes: [COLLECTOR_ENV_PREFIX],
  helpHint: "see --help",
  configFile: { option: "config", default: DEFAULT_CONFIG_FILE },
  crossCheck,
};

/**
 * Computes the effective configuration from flags, environment and config file.
 *
 * @param args command-line arguments after the command name
 * @param env the environment (`Deno.env.toObject()`)
 * @param readFile reads the config file (tests); default `Deno.readTextFileSync`
 * @throws {ConfigError} naming the key and its source, e.g.
 *   `Invalid FLOWEXPORTER_POLL_MS "abc": expected an integer from 1 to 60000`
 */
export function loadConfig(
  args: string[],
  env: Record<string, string>,
  readFile: ReadTextFile = Deno.readTextFileSync,
): EffectiveConfig {
  return loadOptions(CONFIG_SCHEMA, args, env, readFile);
}

/** Rules between options. */
function crossCheck(config: EffectiveConfig, origin: (name: keyof typeof OPTIONS) => string) {
  const v = config.values;
  if (v.metricsListen && !v.metricsAllowRemote && !isLoopbackHost(v.metricsListen.hostname)) {
    throw new ConfigError(
      `Invalid ${origin("metrics_listen")} ${
        JSON.stringify(showListen(v.metricsListen))
      }: not a loopback address (use 127.0.0.1 or [::1], or set metrics_allow_remote to expose metrics beyond this host)`,
    );
  }
  checkSetTogether(config, origin, ["client_cert", "client_key"], "mutual TLS");
}

/** The options part of `--help`, grouped, with each default. */
export const OPTIONS_HELP: string = optionsHelp(CONFIG_SCHEMA, "ring_bytes");

/** The `--help` text of `flowexporter config check`. */
export const CONFIG_CHECK_HELP = `Usage: flowexporter config check [options]

Prints the effective configuration as JSON: each option's value and where it came from
(flag, env, file or default). Exit status: 0 valid, 2 invalid (one line on stderr).

${OPTIONS_HELP}`;

/**
 * `flowexporter config check [options]`: prints the effective configuration as JSON,
 * `{"file": …, "options": {"ring_bytes": {"value": 8388608, "source": "default"}, …}}`.
 *
 * @param args the arguments after `config check`
 * @returns 0 when valid, 2 after printing the one-line error
 */
export function runConfigCheck(
  args: string[],
  env: Record<string, string> = Deno.env.toObject(),
  readFile: ReadTextFile = Deno.readTextFileSync,
  out: CommandOutput = { stdout: console.log, stderr: console.error },
): Promise<number> {
  return Promise.resolve(
    checkOptions(CONFIG_SCHEMA, { args, env, readFile, out, help: CONFIG_CHECK_HELP }),
  );
}

/** The JSON `config check` prints: every option's value (as the file takes it) and source. */
export function describeConfig(config: EffectiveConfig): DescribedOptions {
  return describeOptions(CONFIG_SCHEMA, config);
}
