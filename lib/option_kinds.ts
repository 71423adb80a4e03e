/**
 * The kinds of configuration values: how each is read from text (a flag, an environment
 * variable), from JSON (a config file), shown back, and what its error says. The option tables
 * of the agent (cli/config.ts) and of the collector (collector/config.ts) are built from these,
 * and lib/options.ts reads them.
 *
 * @example
 * ```ts
 * import { integer } from "./option_kinds.ts";
 * const pollMs = integer({ default: 100, max: 60_000, help: "drain delay, ms", group: "capture" });
 * pollMs.parse("250"); // 250
 * ```
 *
 * @module
 */

/** Where an effective value came from, highest precedence first. */
export type Source = "flag" | "env" | "file" | "default";

/** A value that does not fit its option; the message says what was expected (`expected …`). */
export class ValueError extends Error {
  override name = "ValueError";
}

/** One option: its type, default, help and parsers. */
export interface OptionSpec<T> {
  readonly default: T;
  /** One line for `--help` and the docs. */
  readonly help: string;
  /** The heading it is listed under: a key of its schema's `groups`. */
  readonly group: string;
  /** The value placeholder in `--help` (`N`, `DIR`, `json|none`); "" for a boolean switch. */
  readonly arg: string;
  /** False when the option cannot be set in the config file (the file's own path). */
  readonly inFile: boolean;
  /** Reads a flag or environment value. @throws {ValueError} */
  parse(text: string): T;
  /** Reads a config file value. @throws {ValueError} */
  fromJson(value: unknown): T;
  /** The value as JSON, in a form `fromJson` accepts (for `config check`). */
  toJson(value: T): unknown;
  /** The value for people (`--help` defaults): `8MiB`, `1m`. */
  show(value: T): string;
}

/** What every kind takes: the default, the help line, the group, and optional overrides. */
export interface Common<T> {
  default: T;
  help: string;
  group: string;
  arg?: string;
  inFile?: boolean;
}

function spec<T>(
  common: Common<T>,
  arg: string,
  parse: (text: string) => T,
  fromJson: (value: unknown) => T,
  toJson: (value: T) => unknown = (v) => v ?? null,
  show: (value: T) => string = (v) => v === undefined ? "" : String(v),
): OptionSpec<T> {
  return {
    default: common.default,
    help: common.help,
    group: common.group,
    arg: common.arg ?? arg,
    inFile: common.inFile ?? true,
    parse,
    fromJson,
    toJson,
    show,
  };
}

/** A switch: `--flag` or `--flag=false`; true/false (also 1/0, yes/no, on/off) in text. */
export function boolean(common: Common<boolean>): OptionSpec<boolean> {
  const parse = (text: string) => {
    const t = text.toLowerCase();
    if (["true", "1", "yes", "on"].includes(t)) return true;
    if (["false", "0", "no", "off"].includes(t)) return false;
    throw new ValueError("expected true or false");
  };
  return spec(common, "", parse, (v) => {
    if (typeof v !== "boolean") throw new ValueError("expected true or false");
    return v;
  });
}

/** One of a fixed set of words. */
export function choice<const V extends string>(
  values: readonly V[],
  common: Common<V>,
): OptionSpec<V> {
  const expected = `expected ${values.slice(0, -1).join(", ")} or ${values.at(-1)}`;
  const parse = (text: string) => {
    const found = values.find((v) => v === text);
    if (found === undefined) throw new ValueError(expected);
    return found;
  };
  return spec(common, values.join("|"), parse, (v) => {
    if (typeof v !== "string") throw new ValueError(expected);
    return parse(v);
  });
}

/** A whole number within bounds. */
export function integer(
  common: Common<number> & { min?: number; max?: number },
): OptionSpec<number> {
  const min = common.min ?? 1;
  const max = common.max ?? Number.MAX_SAFE_INTEGER;
  const expected = min === 1 && max === Number.MAX_SAFE_INTEGER
    ? "expected a positive integer"
    : max === Number.MAX_SAFE_INTEGER
    ? `expected an integer of at least ${min}`
    : `expected an integer from ${min} to ${max}`;
  const check = (n: number) => {
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new ValueError(expected);
    return n;
  };
  return spec(common, "N", (text) => {
    if (!/^\d+$/.test(text)) throw new ValueError(expected);
    return check(Number(text));
  }, (v) => check(typeof v === "number" ? v : NaN));
}

/**
 * A number with an optional unit suffix (`units` maps suffix to multiplier), given as text in
 * flags and environment, as a number or text in the config file.
 */
function withUnits(
  common: Common<number>,
  meta: string,
  units: Record<string, number>,
  defaultUnit: string,
  expected: string,
  check: (n: number) => number,
  show: (n: number) => string,
): OptionSpec<number> {
  const pattern = new RegExp(`^(\\d+)\\s*(${Object.keys(units).filter((u) => u).join("|")})?$`);
  const parse = (text: string) => {
    const m = pattern.exec(text);
    if (!m) throw new ValueError(expected);
    return check(Number(m[1]) * units[m[2] ?? defaultUnit]);
  };
  return spec(
    common,
    meta,
    parse,
    (v) => {
      if (typeof v === "number") return check(v);
      if (typeof v === "string") return parse(v);
      throw new ValueError(expected);
    },
    (v) => v,
    show,
  );
}

const BYTE_UNITS: Record<string, number> = { "": 1, KiB: 1 << 10, MiB: 1 << 20, GiB: 1 << 30 };

/** A size in bytes: `8388608` or `8MiB` (KiB, MiB, GiB are powers of 1024). */
export function bytes(
  common: Common<number> & { min: number; max: number; powerOfTwo?: boolean },
): OptionSpec<number> {
  const { min, max, powerOfTwo } = common;
  const expected = `expected ${powerOfTwo ? "a power of two" : "a byte count"} from ${
    showBytes(min)
  } to ${showBytes(max)}, e.g. ${showBytes(common.default)} or ${common.default}`;
  const check = (n: number) => {
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new ValueError(expected);
    if (powerOfTwo && (n & (n - 1)) !== 0) throw new ValueError(expected);
    return n;
  };
  return withUnits(common, "BYTES", BYTE_UNITS, "", expected, check, showBytes);
}

/** `n` in the first of `names` (largest first) that divides it: `8MiB`, `90s`; else undefined. */
function inLargestUnit(
  n: number,
  units: Record<string, number>,
  names: string[],
): string | undefined {
  const unit = names.find((u) => n >= units[u] && n % units[u] === 0);
  return unit === undefined ? undefined : `${n / units[unit]}${unit}`;
}

/** `8MiB` when `n` is a whole number of KiB, MiB or GiB, else the plain number. */
export function showBytes(n: number): string {
  return inLargestUnit(n, BYTE_UNITS, ["GiB", "MiB", "KiB"]) ?? String(n);
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** A duration in ms: `60s`, `1m`, `250ms`, or a plain number of ms. */
export function duration(
  common: Common<number> & { min: number; max: number },
): OptionSpec<number> {
  const { min, max } = common;
  const expected = `expected a duration from ${showDuration(min)} to ${showDuration(max)}, e.g. ${
    showDuration(common.default)
  } or ${common.default} (ms)`;
  const check = (ms: number) => {
    if (!Number.isSafeInteger(ms) || ms < min || ms > max) throw new ValueError(expected);
    return ms;
  };
  return withUnits(common, "DURATION", DURATION_UNITS, "ms", expected, check, showDuration);
}

/** A duration as {@linkcode duration}, or "" (null in the file) for `emptyMeans`. */
export function optionalDuration(
  common: Common<number | undefined> & { min: number; max: number; emptyMeans: string },
): OptionSpec<number | undefined> {
  const { min, max } = common;
  const given = duration({ ...common, default: max });
  const expected = `expected a duration from ${showDuration(min)} to ${showDuration(max)}, e.g. ${
    showDuration(max)
  } or ${max} (ms), or empty ${common.emptyMeans}`;
  const checked = <T>(read: (v: T) => number) => (v: T) => {
    try {
      return read(v);
    } catch (error) {
      if (error instanceof ValueError) throw new ValueError(expected);
      throw error;
    }
  };
  return spec(
    common,
    "DURATION",
    (text) => text === "" ? undefined : checked(given.parse)(text),
    (v) => v === null ? undefined : checked(given.fromJson)(v),
    (v) => v ?? null,
    (v) => v === undefined ? "" : showDuration(v),
  );
}

/** `1m`, `90s`, `250ms`: the largest unit that divides `ms`. */
export function showDuration(ms: number): string {
  return inLargestUnit(ms, DURATION_UNITS, ["h", "m", "s"]) ?? `${ms}ms`;
}

/** A path that must be given. */
export function path(common: Common<string>): OptionSpec<string> {
  const check = (v: unknown) => {
    if (typeof v !== "string" || v === "") throw new ValueError("expected a path");
    return v;
  };
  return spec(common, "PATH", check, check);
}

/** A path that may be left out: "" (or null in the file) means none. */
export function optionalPath(common: Common<string | undefined>): OptionSpec<string | undefined> {
  const fromJson = (v: unknown) => {
    if (v === null || v === "") return undefined;
    if (typeof v !== "string") throw new ValueError("expected a path, or empty for none");
    return v;
  };
  return spec(common, "PATH", (text) => text === "" ? undefined : text, fromJson);
}

/** An `http://` or `https://` URL; "" (or null in the file) means none. */
export function httpUrl(
  common: Common<string | undefined> & { emptyMeans: string },
): OptionSpec<string | undefined> {
  const expected = `expected an http:// or https:// URL, or empty ${common.emptyMeans}`;
  const parse = (text: string) => {
    if (text === "") return undefined;
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new ValueError(expected);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new ValueError(expected);
    return text;
  };
  return spec(common, "URL", parse, (v) => {
    if (v === null) return undefined;
    if (typeof v !== "string") throw new ValueError(expected);
    return parse(v);
  });
}

/**
 * Comma-separated URLs whose scheme is one of `schemes` (`nats://a:4222,nats://b:4222`); ""
 * (or an empty list in the file) means none.
 */
export function urlList(
  common: Common<readonly string[]> & { schemes: readonly string[]; emptyMeans: string },
): OptionSpec<readonly string[]> {
  const expected = `expected comma-separated ${
    common.schemes.map((s) => `${s}//`).join(" or ")
  } URLs, or empty ${common.emptyMeans}`;
  const check = (list: string[]) => {
    for (const text of list) {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        throw new ValueError(expected);
      }
      if (!common.schemes.includes(url.protocol)) throw new ValueError(expected);
    }
    return list;
  };
  const parse = (text: string) =>
    check(text.split(",").map((s) => s.trim()).filter((s) => s !== ""));
  return spec(
    common,
    "URL[,URL…]",
    parse,
    (v) => {
      if (v === null) return [];
      if (typeof v === "string") return parse(v);
      if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) throw new ValueError(expected);
      return check(v as string[]);
    },
    (v) => [...v],
    (v) => v.join(","),
  );
}

/** A TCP listen address. */
export interface ListenAddress {
  /** Without brackets: `127.0.0.1`, `::1`, `localhost`, `0.0.0.0` for all. */
  hostname: string;
  /** 0 picks a free port. */
  port: number;
}

const LISTEN_PATTERN = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]*)):(\d{1,5})$/;

/** Reads `host:port`, `[v6]:port` or `:port` (every interface). @throws {ValueError} */
function parseListen(text: string, expected: string): ListenAddress {
  const m = LISTEN_PATTERN.exec(text);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new ValueError(expected);
  const hostname = m[1] ?? m[2];
  return { hostname: hostname === "" ? "0.0.0.0" : hostname, port };
}

/** `host:port`, `[v6]:port` or `:port` (every interface); it must be given. */
export function listen(common: Common<ListenAddress>): OptionSpec<ListenAddress> {
  const expected = "expected host:port, [IPv6]:port or :port for every interface";
  const parse = (text: string) => parseListen(text, expected);
  return spec(
    common,
    "HOST:PORT",
    parse,
    (v) => {
      if (typeof v !== "string") throw new ValueError(expected);
      return parse(v);
    },
    showListen,
    showListen,
  );
}

/** `host:port` or `[v6]:port`; "" (or null in the file) means off. */
export function optionalListen(
  common: Common<ListenAddress | undefined>,
): OptionSpec<ListenAddress | undefined> {
  const expected = "expected host:port (e.g. 127.0.0.1:9464 or [::1]:9464), or empty for off";
  const parse = (text: string) => text === "" ? undefined : parseListen(text, expected);
  return spec(
    common,
    "HOST:PORT",
    parse,
    (v) => {
      if (v === null) return undefined;
      if (typeof v !== "string") throw new ValueError(expected);
      return parse(v);
    },
    (v) => v ? showListen(v) : null,
    (v) => v ? showListen(v) : "",
  );
}

/** `127.0.0.1:9464`, `[::1]:9464`. */
export function showListen(address: ListenAddress): string {
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  return `${host}:${address.port}`;
}

/** True for `localhost`, 127.0.0.0/8 and `::1`: addresses only this host can reach. */
export function isLoopbackHost(hostname: string): boolean {
  if (hostname === "localhost" || hostname === "::1") return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}
