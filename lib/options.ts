/**
 * The option machinery: one schema ({@linkcode OptionSchema}) describes every option of a
 * command once, and flags, environment variables, the config file, `--help`, the docs' reference
 * table and the printed effective configuration all derive from it. The agent (cli/config.ts)
 * and the collector (collector/config.ts) each have a schema.
 *
 * Precedence, one rule for every option: **flags > environment > config file > defaults**.
 *
 * - Flag: the option name with `-` for `_` (`--ring-bytes 8MiB`); switches take no value or
 *   `=true`/`=false`.
 * - Environment: the schema's prefix + the name in upper case (`FLOWEXPORTER_RING_BYTES=8MiB`).
 * - Config file: JSON, `{"ring_bytes": "8MiB"}`, named by the schema's config option, else its
 *   default file when that exists.
 *
 * Unknown names and bad values stop with one line naming the key and its source. Pure: the
 * caller hands in the arguments, the environment and the function that reads the file.
 *
 * @example
 * ```ts
 * import { loadOptions } from "./options.ts";
 * import { integer } from "./option_kinds.ts";
 * const schema = {
 *   options: { poll_ms: integer({ default: 100, help: "drain delay, ms", group: "main" }) },
 *   groups: { main: "Options" },
 *   envPrefix: "DEMO_",
 *   helpHint: "see --help",
 * };
 * const loaded = loadOptions(schema, ["--poll-ms", "5"], {}, Deno.readTextFileSync);
 * console.log(loaded.values.pollMs, loaded.sources.pollMs); // 5 "flag"
 * ```
 *
 * @module
 */

import { flagTokens } from "./flag_tokens.ts";
import { optionalPath, type OptionSpec, type Source, ValueError } from "./option_kinds.ts";
import { UsageError } from "./usage_error.ts";
import { errorText } from "./error_text.ts";
import { osProblem, type PathUse } from "./unusable_path.ts";

/** The options of one command, keyed by their config file names (`ring_bytes`). */
export type OptionTable = Record<string, OptionSpec<unknown>>;

/** A command's options and how they are named outside the code. */
export interface OptionSchema<O extends OptionTable> {
  /** Every option, once. Names are the config file keys. */
  readonly options: O;
  /** Group key → heading of `--help`, in the order `--help` lists them. */
  readonly groups: Readonly<Record<string, string>>;
  /** Prefix of the environment variables: `FLOWEXPORTER_`. */
  readonly envPrefix: string;
  /** Variables under `envPrefix` that are not options of this schema (left alone). */
  readonly foreignEnv?: readonly string[];
  /** Prefixes under `envPrefix` that belong to another command (left alone). */
  readonly foreignEnvPrefixes?: readonly string[];
  /** Where to point at the end of an error about an unknown flag: `see --help`. */
  readonly helpHint: string;
  /** The option naming the config file, and the file read when it is not given, if it exists. */
  readonly configFile?: { readonly option: keyof O & string; readonly default: string };
  /**
   * Rules between options, run on the assembled values.
   *
   * @param loaded the effective values and their sources
   * @param origin how to name an option where its value came from, for the message
   * @throws {ConfigError}
   */
  crossCheck?(loaded: LoadedOptions<O>, origin: (name: keyof O & string) => string): void;
}

type CamelCase<S extends string> = S extends `${infer H}_${infer T}`
  ? `${H}${Capitalize<CamelCase<T>>}`
  : S;
type ValueOf<S> = S extends OptionSpec<infer T> ? T : never;

/** The effective values of a table, keyed in camelCase (`ringBytes`). */
export type OptionValues<O extends OptionTable> = {
  -readonly [K in keyof O & string as CamelCase<K>]: ValueOf<O[K]>;
};

/** The result of {@linkcode loadOptions}. */
export interface LoadedOptions<O extends OptionTable> {
  values: OptionValues<O>;
  /** Where each value came from. */
  sources: { [K in keyof OptionValues<O>]: Source };
  /** The config file that was read, if any. */
  file: string | null;
  /** `-h` or `--help` was given: show the help; values are the defaults. */
  help: boolean;
}

/**
 * The option naming a command's config file (`--config PATH`); it cannot be set in the file
 * itself. Name it in the schema's `configFile`.
 *
 * @param defaultFile the file read when the option is not given, if it exists
 * @param group the heading it is listed under
 */
export function configFileOption(
  defaultFile: string,
  group: string,
): OptionSpec<string | undefined> {
  return optionalPath({
    default: undefined,
    help: `JSON config file (default ${defaultFile} if it exists; empty: none)`,
    group,
    inFile: false,
  });
}

/** A bad flag, environment variable, file key or value; main.ts prints it and exits 2. */
export class ConfigError extends UsageError {
  override name = "ConfigError";
}

/** Reads a file as text; throws Deno.errors.NotFound when it does not exist. */
export type ReadTextFile = (path: string) => string;

/** `--ring-bytes` for `ring_bytes`. */
export function flagOf(name: string): string {
  return `--${name.replaceAll("_", "-")}`;
}

/** `FLOWEXPORTER_RING_BYTES` for `ring_bytes` under the prefix `FLOWEXPORTER_`. */
export function envOf(schema: { envPrefix: string }, name: string): string {
  return schema.envPrefix + name.toUpperCase();
}

/**
 * An option named every way it can be given, for a message about its value:
 * `--spool-dir / FLOWEXPORTER_SPOOL_DIR / spool_dir` (no config key for one the file cannot set).
 *
 * @param schema the command's options
 * @param name the option (its config file key)
 */
export function optionNames<O extends OptionTable>(
  schema: Pick<OptionSchema<O>, "options" | "envPrefix">,
  name: keyof O & string,
): string {
  const names = [flagOf(name), envOf(schema, name)];
  if (schema.options[name].inFile) names.push(name);
  return names.join(" / ");
}

/**
 * How a command uses the path of option `name` ({@linkcode import("./unusable_path.ts").PathUse}),
 * for a one-line error naming the option when the path cannot be used.
 *
 * @param schema the command's options
 * @param name the option (its config file key)
 * @param what what the path is: `spool directory`
 * @param fix what to do: `choose a writable directory`
 */
export function pathUse<O extends OptionTable>(
  schema: Pick<OptionSchema<O>, "options" | "envPrefix">,
  name: keyof O & string,
  what: string,
  fix: string,
): PathUse {
  return { what, option: optionNames(schema, name), fix };
}

function camel(name: string): string {
  return name.replace(/_(.)/g, (_, c: string) => c.toUpperCase());
}

type Layer = Record<string, { value: unknown; source: Source }>;

/** What reading and rendering need of a schema: its options and their outside names. */
type Naming = Omit<OptionSchema<OptionTable>, "crossCheck">;

/**
 * Computes the effective options from flags, environment and config file.
 *
 * @param schema the command's options
 * @param args command-line arguments after the command name
 * @param env the environment (`Deno.env.toObject()`)
 * @param readFile reads the config file
 * @throws {ConfigError} naming the key and its source, e.g.
 *   `Invalid FLOWEXPORTER_POLL_MS "abc": expected an integer from 1 to 60000`
 */
export function loadOptions<O extends OptionTable>(
  schema: OptionSchema<O>,
  args: string[],
  env: Record<string, string>,
  readFile: ReadTextFile,
): LoadedOptions<O> {
  const flags = readFlags(schema, args);
  if (flags === "help") return assemble(schema, [], null, true);
  const fromEnv = readEnv(schema, env);
  let text: { path: string; text: string } | undefined;
  if (schema.configFile) {
    const option = schema.configFile.option;
    // An empty --config or FLOWEXPORTER_CONFIG means no file, not even the default one.
    const named = flags[option] ?? fromEnv[option];
    if (!named || named.value !== undefined) {
      text = readConfigText(
        named?.value as string | undefined,
        schema.configFile.default,
        flags[option] ? flagOf(option) : envOf(schema, option),
        readFile,
      );
    }
  }
  const fromFile = text === undefined ? {} : parseConfigFile(schema, text.path, text.text);
  const loaded = assemble(schema, [flags, fromEnv, fromFile], text?.path ?? null, false);
  schema.crossCheck?.(loaded, (name) => originOf(schema, loaded, name));
  return loaded;
}

/** Takes each option from the first layer that sets it, else its default. */
function assemble<O extends OptionTable>(
  schema: OptionSchema<O>,
  layers: Layer[],
  file: string | null,
  help: boolean,
): LoadedOptions<O> {
  const values: Record<string, unknown> = {};
  const sources: Record<string, Source> = {};
  for (const [name, spec] of Object.entries(schema.options)) {
    const layer = layers.find((l) => l[name] !== undefined)?.[name];
    values[camel(name)] = layer ? layer.value : spec.default;
    sources[camel(name)] = layer ? layer.source : "default";
  }
  return {
    values: values as OptionValues<O>,
    sources: sources as LoadedOptions<O>["sources"],
    file,
    help,
  };
}

function readFlags(schema: Naming, args: string[]): Layer | "help" {
  const takesValue = new Set<string>();
  const byFlag = new Map<string, string>();
  for (const [name, spec] of Object.entries(schema.options)) {
    const flag = name.replaceAll("_", "-");
    byFlag.set(flag, name);
    if (spec.arg !== "") takesValue.add(flag);
  }
  // Tokens only: this code reports unknown flags and missing values in its own words.
  const tokens = flagTokens(args, takesValue, { h: "help" });
  if (tokens.some((t) => t.kind === "option" && (t.name === "help" || t.name === "h"))) {
    return "help";
  }
  const layer: Layer = {};
  for (const token of tokens) {
    if (token.kind === "option-terminator") continue;
    if (token.kind === "positional") {
      throw new ConfigError(
        `Unexpected argument ${
          JSON.stringify(token.value)
        } (options start with --; ${schema.helpHint})`,
      );
    }
    const name = byFlag.get(token.name);
    if (name === undefined) {
      const hint = closest(token.name, byFlag.keys());
      throw new ConfigError(
        `Invalid flag ${token.rawName}: no such option (${
          hint ? `did you mean --${hint}?` : schema.helpHint
        })`,
      );
    }
    const spec = schema.options[name];
    let text: string;
    if (spec.arg === "") {
      text = token.value ?? "true";
    } else if (token.value === undefined || (!token.inlineValue && token.value.startsWith("--"))) {
      throw new ConfigError(
        `Missing value for ${flagOf(name)} (give it as ${flagOf(name)} ${spec.arg})`,
      );
    } else {
      text = token.value;
    }
    layer[name] = {
      value: parseWith(spec, text, `${flagOf(name)} ${JSON.stringify(text)}`),
      source: "flag",
    };
  }
  return layer;
}

function readEnv(schema: Naming, env: Record<string, string>): Layer {
  const byEnv = new Map(Object.keys(schema.options).map((name) => [envOf(schema, name), name]));
  const foreign = (key: string) =>
    schema.foreignEnv?.includes(key) ||
    schema.foreignEnvPrefixes?.some((prefix) => key.startsWith(prefix));
  const layer: Layer = {};
  for (const [key, text] of Object.entries(env)) {
    if (!key.startsWith(schema.envPrefix)) continue;
    const name = byEnv.get(key);
    if (name === undefined) {
      if (foreign(key)) continue;
      const hint = closest(key, byEnv.keys());
      throw new ConfigError(
        `Invalid environment variable ${key}: no such option (${
          hint ? `did you mean ${hint}?` : "unset it"
        })`,
      );
    }
    layer[name] = {
      value: parseWith(schema.options[name], text, `${key} ${JSON.stringify(text)}`),
      source: "env",
    };
  }
  return layer;
}

function readConfigText(
  explicit: string | undefined,
  defaultFile: string,
  from: string,
  readFile: ReadTextFile,
): { path: string; text: string } | undefined {
  const path = explicit ?? defaultFile;
  try {
    return { path, text: readFile(path) };
  } catch (error) {
    if (explicit === undefined && error instanceof Deno.errors.NotFound) return undefined;
    const why = osProblem(error) ?? errorText(error);
    throw new ConfigError(
      `Cannot read config file ${path}: ${why} (${
        explicit === undefined ? "fix the file or its permissions" : `fix ${from}`
      })`,
      { cause: error },
    );
  }
}

function parseConfigFile(schema: Naming, path: string, text: string): Layer {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(
      `Cannot parse config file ${path}: ${errorText(error)} (it must be one JSON object)`,
      { cause: error },
    );
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`Invalid config file ${path}: expected a JSON object of option names`);
  }
  const fileNames = Object.keys(schema.options).filter((n) => schema.options[n].inFile);
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
      value = schema.options[name].fromJson(raw);
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      throw new ConfigError(`Invalid ${name} ${JSON.stringify(raw)} in ${path}: ${error.message}`);
    }
    layer[name] = { value, source: "file" };
  }
  return layer;
}

function parseWith(spec: OptionSpec<unknown>, text: string, what: string): unknown {
  try {
    return spec.parse(text);
  } catch (error) {
    if (!(error instanceof ValueError)) throw error;
    throw new ConfigError(`Invalid ${what}: ${error.message}`);
  }
}

/**
 * How to name an option where its value came from, for a message about it: `--metrics-listen`,
 * `FLOWEXPORTER_METRICS_LISTEN`, `metrics_listen in /etc/flowexporter/config.json`,
 * `metrics_listen (default)`.
 */
export function originOf<O extends OptionTable>(
  schema: OptionSchema<O>,
  loaded: LoadedOptions<O>,
  name: keyof O & string,
): string {
  switch ((loaded.sources as Record<string, Source>)[camel(name)]) {
    case "flag":
      return flagOf(name);
    case "env":
      return envOf(schema, name);
    case "file":
      return `${name} in ${loaded.file}`;
    default:
      return `${name} (default)`;
  }
}

/**
 * A rule between two options that only work together (a certificate and its key): both set, or
 * neither.
 *
 * @param loaded the effective options
 * @param origin names an option where its value came from (the `crossCheck` argument)
 * @param pair the two option names
 * @param needs what needs both, for the message: `HTTPS`
 * @throws {ConfigError} naming the one given, e.g.
 *   `Invalid --tls-key: HTTPS needs both tls_cert and tls_key (set tls_cert)`
 */
export function checkSetTogether<O extends OptionTable>(
  loaded: LoadedOptions<O>,
  origin: (name: keyof O & string) => string,
  pair: readonly [keyof O & string, keyof O & string],
  needs: string,
): void {
  const values = loaded.values as Record<string, unknown>;
  const [a, b] = pair;
  const aSet = values[camel(a)] !== undefined;
  if (aSet === (values[camel(b)] !== undefined)) return;
  const [given, missing] = aSet ? [a, b] : [b, a];
  throw new ConfigError(
    `Invalid ${origin(given)}: ${needs} needs both ${a} and ${b} (set ${missing})`,
  );
}

/** Edit distance, for "did you mean" hints. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/** The closest of `candidates` to `word`, if close enough to be a typo. */
function closest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

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

/**
 * The options part of `--help`: how options are given, then each option under its group's
 * heading, with its default.
 *
 * @param schema the command's options
 * @param example the option whose flag, variable and file key illustrate the first line
 */
export function optionsHelp<O extends OptionTable>(
  schema: OptionSchema<O>,
  example: keyof O & string,
): string {
  const specs = Object.values(schema.options);
  const units = [
    specs.some((s) => s.arg === "BYTES") ? "sizes take KiB, MiB, GiB" : "",
    specs.some((s) => s.arg === "DURATION")
      ? "durations take ms, s, m, h (a bare number is ms)"
      : "",
  ].filter((u) => u).join("; ");
  const intro = `Every option is also an environment variable (${envOf(schema, example)} for ${
    flagOf(example)
  }) and a config file key (${example}). Precedence: flags > environment > config file > defaults.${
    units ? ` ${units[0].toUpperCase()}${units.slice(1)}.` : ""
  }`;
  const rows = Object.entries(schema.options).map(([name, spec]) => {
    const shown = spec.show(spec.default);
    return {
      group: spec.group,
      left: `  ${flagOf(name)}${spec.arg ? ` ${spec.arg}` : ""}`,
      right: `${spec.help}${spec.arg && shown ? ` (default ${shown})` : ""}`,
    };
  });
  const width = Math.min(34, Math.max(...rows.map((r) => r.left.length)) + 2);
  const lines = wrap(intro, HELP_WIDTH);
  const indent = "".padEnd(width);
  for (const [group, title] of Object.entries(schema.groups)) {
    lines.push("", `${title}:`);
    for (const r of rows.filter((r) => r.group === group)) {
      const [first, ...rest] = wrap(r.right, HELP_WIDTH - width);
      if (r.left.length < width) lines.push(r.left.padEnd(width) + first);
      else lines.push(r.left, indent + first);
      for (const line of rest) lines.push(indent + line);
    }
  }
  lines.push("  -h, --help".padEnd(width) + "show this help");
  return lines.join("\n");
}

/**
 * The option reference as a Markdown table: key, flag, environment variable, default, meaning.
 * The docs hold copies that tests keep equal to it.
 */
export function optionsReference(schema: Omit<OptionSchema<OptionTable>, "crossCheck">): string {
  const rows = [["Key", "Flag", "Environment", "Default", "Meaning"]];
  for (const [name, spec] of Object.entries(schema.options)) {
    const shown = spec.show(spec.default);
    rows.push([
      spec.inFile ? `\`${name}\`` : "—",
      `\`${flagOf(name)}${spec.arg ? ` ${spec.arg}` : ""}\``,
      `\`${envOf(schema, name)}\``,
      shown ? `\`${shown}\`` : "—",
      spec.help,
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

/** The effective options as JSON: every value (as a config file takes it) and its source. */
export interface DescribedOptions {
  file: string | null;
  options: Record<string, { value: unknown; source: Source }>;
}

/** What a config check prints: each option's value, in the form the file takes, and source. */
export function describeOptions<O extends OptionTable>(
  schema: OptionSchema<O>,
  loaded: LoadedOptions<O>,
): DescribedOptions {
  const values = loaded.values as Record<string, unknown>;
  const sources = loaded.sources as Record<string, Source>;
  const options: DescribedOptions["options"] = {};
  for (const [name, spec] of Object.entries(schema.options)) {
    options[name] = { value: spec.toJson(values[camel(name)]), source: sources[camel(name)] };
  }
  return { file: loaded.file, options };
}

/** Where a command writes; each call gets one complete line or block, without the final newline. */
export interface CommandOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** One run of a command: its arguments and what it reads and writes. */
export interface Invocation {
  /** The arguments after the command's name. */
  args: string[];
  /** The environment (`Deno.env.toObject()`). */
  env: Record<string, string>;
  /** Reads the config file. */
  readFile: ReadTextFile;
  /** Where the help, the output and the error go. */
  out: CommandOutput;
  /** The command's `--help` text. */
  help: string;
}

/**
 * Loads a command's options, or prints what ends the command instead: the help for `--help`,
 * or the one-line error (`flowexporter: Invalid …`).
 *
 * @param schema the command's options
 * @param run the arguments, environment, file reader, output and help of this run
 * @returns the options, or the exit status after printing: 0 for the help, 2 for an error
 */
export function loadOptionsOrExit<O extends OptionTable>(
  schema: OptionSchema<O>,
  run: Invocation,
): LoadedOptions<O> | number {
  let loaded: LoadedOptions<O>;
  try {
    loaded = loadOptions(schema, run.args, run.env, run.readFile);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    run.out.stderr(`flowexporter: ${error.message}`);
    return 2;
  }
  if (!loaded.help) return loaded;
  run.out.stdout(run.help);
  return 0;
}

/**
 * A config check: prints the effective options as JSON ({@linkcode describeOptions}), the help
 * for `--help`, or the one-line error.
 *
 * @param schema the command's options
 * @param run the options to check, with the environment, file reader, output and help
 * @returns 0 when valid, 2 after printing the error
 */
export function checkOptions<O extends OptionTable>(
  schema: OptionSchema<O>,
  run: Invocation,
): number {
  const loaded = loadOptionsOrExit(schema, run);
  if (typeof loaded === "number") return loaded;
  run.out.stdout(JSON.stringify(describeOptions(schema, loaded), null, 2));
  return 0;
}
