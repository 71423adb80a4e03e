/**
 * The agent's configuration: one schema ({@linkcode OPTIONS}) describes every option once;
 * flags, environment variables, the config file, `--help` and the reference in
 * docs/operations.md all derive from it.
 *
 * Precedence, one rule for every option: **flags > environment > config file > defaults**.
 *
 * - Flag: `--ring-bytes 8MiB` (the option name with `-` for `_`); switches take no value or
 *   `=true`/`=false` (`--perf-buffer=false` overrides a file that sets it).
 * - Environment: `FLOWEXPORTER_RING_BYTES=8MiB` (`FLOWEXPORTER_` + the name in upper case).
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

import { parseArgs } from "node:util";
import { MAPS_PIN_DIR } from "../lib/map_layout.ts";
import { DEFAULT_CERT_PATH, DEFAULT_ID_RULE, ID_RULES } from "../identity/host_identity.ts";
import { DEFAULT_INTERVAL_MS, DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS } from "../lib/batcher.ts";
import { DEFAULT_GZIP_LEVEL } from "../lib/gzip.ts";
import { LOG_FORMATS, LOG_LEVELS } from "../lib/log.ts";
import { DEFAULT_SPOOL_BYTES } from "../lib/spool.ts";
import { MAX_BATCH_BYTES } from "../lib/wire.ts";
import { UsageError } from "./_io.ts";
import {
  boolean,
  bytes,
  choice,
  closest,
  duration,
  type Group,
  httpUrl,
  integer,
  isLoopbackHost,
  listen,
  optionalPath,
  type OptionSpec,
  path,
  showListen,
  type Source,
  ValueError,
} from "./_config_kinds.ts";

export { isLoopbackHost, type ListenAddress, type Source } from "./_config_kinds.ts";

/** The config file read when neither `--config` nor `FLOWEXPORTER_CONFIG` names one. */
export const DEFAULT_CONFIG_FILE = "/etc/flowexporter/config.json";
/** Prefix of the environment variables the agent reads. */
export const ENV_PREFIX = "FLOWEXPORTER_";
/** `FLOWEXPORTER_*` variables that are not options (the native library path, ffi/symbols.ts). */
export const NON_OPTION_ENV: readonly string[] = ["FLOWEXPORTER_LIB"];

/** Every option, once. Names are the config file keys. */
export const OPTIONS = {
  config: optionalPath({
    default: undefined,
    help: `JSON config file (default ${DEFAULT_CONFIG_FILE} if it exists; empty: none)`,
    group: "general",
    inFile: false,
  }),
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
    default: 8 << 20,
    min: 4096,
    max: 1 << 30,
    powerOfTwo: true,
    help: "kernel buffer size, a power of two",
    group: "capture",
  }),
  flows_max: integer({
    default: 131072,
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
    min: 1_000,
    max: 600_000,
    help: "batch window, aligned to the wall clock",
    group: "shipping",
  }),
  batch_max_records: integer({
    default: DEFAULT_MAX_RECORDS,
    help: "flows per batch before its window closes early",
    group: "shipping",
  }),
  batch_max_bytes: bytes({
    default: DEFAULT_MAX_BYTES,
    min: 1024,
    // lib/batcher.ts keeps 64 KiB of MAX_BATCH_BYTES for the batch header.
    max: MAX_BATCH_BYTES - 64 * 1024,
    help: "encoded flow bytes per batch before its window closes early",
    group: "shipping",
  }),
  gzip_level: integer({
    default: DEFAULT_GZIP_LEVEL,
    max: 9,
    help: "gzip level of batches: 1 costs half the CPU of 3 for 16 % more bytes",
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
  metrics_listen: listen({
    default: undefined,
    help: "serve /metrics and /healthz here (empty: off; loopback only by default)",
    group: "operations",
  }),
  metrics_allow_remote: boolean({
    default: false,
    help: "allow metrics_listen on a non-loopback address",
    group: "operations",
  }),
  log_format: choice(LOG_FORMATS, {
    default: "text",
    help: "stderr log format",
    group: "operations",
  }),
  log_level: choice(LOG_LEVELS, {
    default: "info",
    help: "lowest level logged",
    group: "operations",
  }),
  lock_file: path({
    default: "/run/flowexporter.lock",
    help: "lock that keeps a second agent from starting on this host",
    group: "operations",
  }),
} as const satisfies Record<string, OptionSpec<unknown>>;

/** A config file key, e.g. `ring_bytes`. */
export type OptionName = keyof typeof OPTIONS;

type CamelCase<S extends string> = S extends `${infer H}_${infer T}`
  ? `${H}${Capitalize<CamelCase<T>>}`
  : S;
type ValueOf<S> = S extends OptionSpec<infer T> ? T : never;

/**
 * The effective values, keyed in camelCase (`ringBytes`); durations are ms. Field names match
 * `AgentOptions` and `RunOptions`, so the object can be handed to them directly.
 */
export type Config = { -readonly [K in OptionName as CamelCase<K>]: ValueOf<typeof OPTIONS[K]> };

/** The result of {@linkcode loadConfig}. */
export interface EffectiveConfig {
  values: Config;
  /** Where each value came from. */
  sources: { [K in keyof Config]: Source };
  /** The config file that was read, if any. */
  file: string | null;
  /** `-h` or `--help` was given: show {@linkcode OPTIONS_HELP}; values are the defaults. */
  help: boolean;
}

/** A bad flag, environment variable, file key or value; main.ts prints it and exits 2. */
export class ConfigError extends UsageError {
  override name = "ConfigError";
}

const NAMES = Object.keys(OPTIONS) as OptionName[];
const spec = (name: OptionName) => OPTIONS[name] as OptionSpec<unknown>;

/** `--ring-bytes` for `ring_bytes`. */
export function flagOf(name: OptionName): string {
  return `--${name.replaceAll("_", "-")}`;
}

/** `FLOWEXPORTER_RING_BYTES` for `ring_bytes`. */
export function envOf(name: OptionName): string {
  return ENV_PREFIX + name.toUpperCase();
}

function camel(name: OptionName): keyof Config {
  return name.replace(/_(.)/g, (_, c: string) => c.toUpperCase()) as keyof Config;
}

/** Reads a file as text; throws Deno.errors.NotFound when it does not exist. */
export type ReadTextFile = (path: string) => string;

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
  const flags = readFlags(args);
  if (flags === "help") return assemble([], null, true);
  const fromEnv = readEnv(env);
  // An empty --config or FLOWEXPORTER_CONFIG means no file, not even the default one.
  const named = flags.config ?? fromEnv.config;
  const text = named && named.value === undefined ? undefined : readConfigText(
    named?.value as string | undefined,
    flags.config ? "--config" : envOf("config"),
    readFile,
  );
  const fromFile = text === undefined ? {} : parseConfigFile(text.path, text.text);
  const config = assemble([flags, fromEnv, fromFile], text?.path ?? null, false);
  crossCheck(config);
  return config;
}

/** Takes each option from the first layer that sets it, else its default. */
function assemble(layers: Layer[], file: string | null, help: boolean): EffectiveConfig {
  const values = {} as Record<string, unknown>;
  const sources = {} as Record<string, Source>;
  for (const name of NAMES) {
    const layer = layers.find((l) => l[name] !== undefined)?.[name];
    values[camel(name)] = layer ? layer.value : spec(name).default;
    sources[camel(name)] = layer ? layer.source : "default";
  }
  return {
    values: values as Config,
    sources: sources as EffectiveConfig["sources"],
    file,
    help,
  };
}

type Layer = Partial<Record<OptionName, { value: unknown; source: Source }>>;

function readFlags(args: string[]): Layer | "help" {
  const options: Record<string, { type: "boolean" | "string"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  const byFlag = new Map<string, OptionName>();
  for (const name of NAMES) {
    const flag = name.replaceAll("_", "-");
    byFlag.set(flag, name);
    options[flag] = { type: spec(name).arg === "" ? "boolean" : "string" };
  }
  // Non-strict: this code reports unknown flags and missing values in the agent's own words.
  const { tokens } = parseArgs({
    args,
    options,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (tokens.some((t) => t.kind === "option" && (t.name === "help" || t.name === "h"))) {
    return "help";
  }
  const layer: Layer = {};
  for (const token of tokens) {
    if (token.kind === "option-terminator") continue;
    if (token.kind === "positional") {
      throw new ConfigError(
        `Unexpected argument ${JSON.stringify(token.value)} (options start with --; see --help)`,
      );
    }
    const name = byFlag.get(token.name);
    if (name === undefined) {
      const hint = closest(token.name, byFlag.keys());
      throw new ConfigError(
        `Invalid flag ${token.rawName}: no such option (${
          hint ? `did you mean --${hint}?` : "see --help"
        })`,
      );
    }
    const s = spec(name);
    let text: string;
    if (s.arg === "") {
      text = token.value ?? "true";
    } else if (token.value === undefined || (!token.inlineValue && token.value.startsWith("--"))) {
      throw new ConfigError(
        `Missing value for ${flagOf(name)} (give it as ${flagOf(name)} ${s.arg})`,
      );
    } else {
      text = token.value;
    }
    layer[name] = {
      value: parseWith(s, text, `${flagOf(name)} ${JSON.stringify(text)}`),
      source: "flag",
    };
  }
  return layer;
}

function readEnv(env: Record<string, string>): Layer {
  const byEnv = new Map(NAMES.map((name) => [envOf(name), name]));
  const layer: Layer = {};
  for (const [key, text] of Object.entries(env)) {
    if (!key.startsWith(ENV_PREFIX) || NON_OPTION_ENV.includes(key)) continue;
    const name = byEnv.get(key);
    if (name === undefined) {
      const hint = closest(key, byEnv.keys());
      throw new ConfigError(
        `Invalid environment variable ${key}: no such option (${
          hint ? `did you mean ${hint}?` : "unset it"
        })`,
      );
    }
    layer[name] = {
      value: parseWith(spec(name), text, `${key} ${JSON.stringify(text)}`),
      source: "env",
    };
  }
  return layer;
}

function readConfigText(
  explicit: string | undefined,
  from: string,
  readFile: ReadTextFile,
): { path: string; text: string } | undefined {
  const path = explicit ?? DEFAULT_CONFIG_FILE;
  try {
    return { path, text: readFile(path) };
  } catch (error) {
    if (explicit === undefined && error instanceof Deno.errors.NotFound) return undefined;
    const why = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : (error as Error).message;
    throw new ConfigError(
      `Cannot read config file ${path}: ${why} (${
        explicit === undefined ? "fix the file or its permissions" : `fix ${from}`
      })`,
      { cause: error },
    );
  }
}

function parseConfigFile(path: string, text: string): Layer {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(
      `Cannot parse config file ${path}: ${(error as Error).message} (it must be one JSON object)`,
      { cause: error },
    );
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`Invalid config file ${path}: expected a JSON object of option names`);
  }
  const fileNames = NAMES.filter((n) => spec(n).inFile);
  const layer: Layer = {};
  for (const [key, raw] of Object.entries(json)) {
    const name = fileNames.find((n) => n === key);
    if (name === undefined) {
      const hint = closest(key, fileNames);
      throw new ConfigError(
        `Invalid config key ${JSON.stringify(key)} in ${path}${
          hint ? ` (did you mean ${JSON.stringify(hint)}?)` : ""
        }`,
      );
    }
    let value: unknown;
    try {
      value = spec(name).fromJson(raw);
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      throw new ConfigError(`Invalid ${name} ${JSON.stringify(raw)} in ${path}: ${error.message}`);
    }
    layer[name] = { value, source: "file" };
  }
  return layer;
}

function parseWith(s: OptionSpec<unknown>, text: string, what: string): unknown {
  try {
    return s.parse(text);
  } catch (error) {
    if (!(error instanceof ValueError)) throw error;
    throw new ConfigError(`Invalid ${what}: ${error.message}`);
  }
}

/** How to name an option where its value came from: `--metrics-listen`, `FLOWEXPORTER_…`, `… in <file>`. */
function origin(config: EffectiveConfig, name: OptionName): string {
  switch (config.sources[camel(name)]) {
    case "flag":
      return flagOf(name);
    case "env":
      return envOf(name);
    case "file":
      return `${name} in ${config.file}`;
    default:
      return `${name} (default)`;
  }
}

/** Rules between options. */
function crossCheck(config: EffectiveConfig): void {
  const v = config.values;
  if (v.metricsListen && !v.metricsAllowRemote && !isLoopbackHost(v.metricsListen.hostname)) {
    throw new ConfigError(
      `Invalid ${origin(config, "metrics_listen")} ${
        JSON.stringify(showListen(v.metricsListen))
      }: not a loopback address (use 127.0.0.1 or [::1], or set metrics_allow_remote to expose metrics beyond this host)`,
    );
  }
  if ((v.clientCert === undefined) !== (v.clientKey === undefined)) {
    const [given, missing] = v.clientCert === undefined
      ? ["client_key", "client_cert"] as const
      : ["client_cert", "client_key"] as const;
    throw new ConfigError(
      `Invalid ${
        origin(config, given)
      }: mutual TLS needs both client_cert and client_key (set ${missing})`,
    );
  }
}

const GROUP_TITLES: Record<Group, string> = {
  general: "General",
  capture: "Capture",
  shipping: "Shipping",
  identity: "Identity",
  operations: "Operations",
};

const HELP_WIDTH = 100;

function wrap(text: string, width: number): string[] {
  const lines = [""];
  for (const word of text.split(" ")) {
    const last = lines.length - 1;
    if (lines[last] === "") lines[last] = word;
    else if (lines[last].length + 1 + word.length <= width) lines[last] += ` ${word}`;
    else lines.push(word);
  }
  return lines;
}

/** The options part of `--help`, grouped, with each default. */
export const OPTIONS_HELP: string = (() => {
  const rows = NAMES.map((name) => {
    const s = spec(name);
    const shown = s.show(s.default);
    return {
      name,
      left: `  ${flagOf(name)}${s.arg ? ` ${s.arg}` : ""}`,
      right: `${s.help}${s.arg && shown ? ` (default ${shown})` : ""}`,
    };
  });
  const width = Math.min(34, Math.max(...rows.map((r) => r.left.length)) + 2);
  const lines = [
    "Every option is also an environment variable (FLOWEXPORTER_RING_BYTES for --ring-bytes) and",
    "a config file key (ring_bytes). Precedence: flags > environment > config file > defaults.",
    "Sizes take KiB, MiB, GiB; durations take ms, s, m, h (a bare number is ms).",
  ];
  const indent = "".padEnd(width);
  for (const group of Object.keys(GROUP_TITLES) as Group[]) {
    lines.push("", `${GROUP_TITLES[group]}:`);
    for (const r of rows.filter((r) => spec(r.name).group === group)) {
      const [first, ...rest] = wrap(r.right, HELP_WIDTH - width);
      if (r.left.length < width) lines.push(r.left.padEnd(width) + first);
      else lines.push(r.left, indent + first);
      for (const line of rest) lines.push(indent + line);
    }
  }
  lines.push("  -h, --help".padEnd(width) + "show this help");
  return lines.join("\n");
})();

/**
 * The option reference as a Markdown table (docs/operations.md holds a copy that a test keeps
 * equal to this).
 */
export function configReference(): string {
  const rows = [["Key", "Flag", "Environment", "Default", "Meaning"]];
  for (const name of NAMES) {
    const s = spec(name);
    const shown = s.show(s.default);
    rows.push([
      s.inFile ? `\`${name}\`` : "—",
      `\`${flagOf(name)}${s.arg ? ` ${s.arg}` : ""}\``,
      `\`${envOf(name)}\``,
      shown ? `\`${shown}\`` : "—",
      s.help,
    ]);
  }
  // GitHub tables split cells on "|" even inside code spans unless it is escaped.
  const cells = rows.map((row) => row.map((c) => c.replaceAll("|", "\\|")));
  // Padded the way `deno fmt` pads tables, so the docs copy survives formatting.
  const widths = cells[0].map((_, i) => Math.max(3, ...cells.map((row) => row[i].length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(cells[0]), line(widths.map((w) => "-".repeat(w))), ...cells.slice(1).map(line)]
    .join("\n");
}

/** The `--help` text of `flowexporter config check`. */
export const CONFIG_CHECK_HELP = `Usage: flowexporter config check [options]

Prints the effective configuration as JSON: each option's value and where it came from
(flag, env, file or default). Exit status: 0 valid, 2 invalid (one line on stderr).

${OPTIONS_HELP}`;

/** Where `config check` writes; defaults to stdout and stderr. */
export interface CheckOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

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
  readFile?: ReadTextFile,
  out: CheckOutput = { stdout: console.log, stderr: console.error },
): Promise<number> {
  let config: EffectiveConfig;
  try {
    config = loadConfig(args, env, readFile);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    out.stderr(`flowexporter: ${error.message}`);
    return Promise.resolve(2);
  }
  if (config.help) {
    out.stdout(CONFIG_CHECK_HELP);
    return Promise.resolve(0);
  }
  out.stdout(JSON.stringify(describeConfig(config), null, 2));
  return Promise.resolve(0);
}

/** The JSON `config check` prints: every option's value (as the file takes it) and source. */
export function describeConfig(
  config: EffectiveConfig,
): { file: string | null; options: Record<string, { value: unknown; source: Source }> } {
  const options: Record<string, { value: unknown; source: Source }> = {};
  for (const name of NAMES) {
    const key = camel(name);
    options[name] = { value: spec(name).toJson(config.values[key]), source: config.sources[key] };
  }
  return { file: config.file, options };
}
