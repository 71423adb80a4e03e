/**
 * The agent's structured log: levels, two formats, one line per event, written through a
 * callback the caller hands in (stderr in the agent, an array in tests).
 *
 * - `text`: `flowexporter: <message>` plus ` key=value` for each field; what a person reads in
 *   a terminal or `journalctl`.
 * - `json`: one object per line, `{"ts":"<RFC 3339>","level":"info","msg":"…","fields":{…}}`;
 *   what a log shipper parses.
 *
 * Volume: nothing is logged per flow at any level. `info` covers start, stop, configuration
 * and identity changes; `warn` covers transient delivery problems and data loss; `debug` adds
 * per-batch lines (at most one per batch, never one per record).
 *
 * @example
 * ```ts
 * import { Log } from "./log.ts";
 * const log = new Log({ format: "json", level: "info", write: (line) => console.error(line) });
 * log.info("capturing TCP flows", { transport: "ringbuf" });
 * // {"ts":"2026-01-01T12:00:00.000Z","level":"info","msg":"capturing TCP flows","fields":{"transport":"ringbuf"}}
 * ```
 *
 * @module
 */

import { printable } from "./printable.ts";
import type { Logger, LogLevel } from "./logger.ts";
import { choice } from "./option_kinds.ts";

export type { Logger, LogLevel };

/** The log formats, in the order `--help` lists them. */
export const LOG_FORMATS = ["text", "json"] as const;
/** `text` for people, `json` for log shippers. */
export type LogFormat = typeof LOG_FORMATS[number];

/** The levels from most to least verbose. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const satisfies readonly LogLevel[];

/**
 * The `log_format` and `log_level` options of a command that logs (lib/options.ts), for its
 * option table.
 *
 * @param group the heading they are listed under
 */
export function logOptions(group: string) {
  return {
    log_format: choice(LOG_FORMATS, { default: "text", help: "stderr log format", group }),
    log_level: choice(LOG_LEVELS, {
      default: "info",
      help: "lowest level logged (debug adds a line per batch)",
      group,
    }),
  } as const;
}

/** Structured context of a line; bigints are written as numbers when exact, errors as their message. */
export type LogFields = Record<string, unknown>;

/** Options of {@linkcode Log}. */
export interface LogOptions {
  /** Default `text`. */
  format?: LogFormat;
  /** Lines below this level are dropped; default `info`. */
  level?: LogLevel;
  /** Receives each line without its newline (the agent writes it to stderr). */
  write: (line: string) => void;
  /** Wall clock for `ts` (tests); default `() => new Date()`. */
  now?: () => Date;
  /** Fields added to every line. */
  fields?: LogFields;
}

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const TEXT_PREFIX = "flowexporter: ";

/** A leveled, structured logger. Cheap to call below its level: it returns before formatting. */
export class Log {
  /** The format in use. */
  readonly format: LogFormat;
  /** The lowest level written. */
  readonly level: LogLevel;
  readonly #min: number;
  readonly #write: (line: string) => void;
  readonly #now: () => Date;
  readonly #fields: LogFields;

  /** Creates a logger; see {@linkcode LogOptions}. */
  constructor(options: LogOptions) {
    this.format = options.format ?? "text";
    this.level = options.level ?? "info";
    this.#min = RANK[this.level];
    this.#write = options.write;
    this.#now = options.now ?? (() => new Date());
    this.#fields = options.fields ?? {};
  }

  /** True when lines of `level` are written: guard expensive field computations with it. */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.#min;
  }

  /**
   * Writes one line if `level` is enabled. A throwing writer is ignored: logging never takes
   * the agent down.
   */
  log(level: LogLevel, message: string, fields?: LogFields): void {
    if (RANK[level] < this.#min) return;
    const all = fields ? { ...this.#fields, ...fields } : this.#fields;
    const line = this.format === "json"
      ? jsonLine(this.#now(), level, message, all)
      : textLine(message, all);
    try {
      this.#write(line);
    } catch {
      // stderr closed or full: nothing better to do with a log line.
    }
  }

  /** `log("debug", …)`. */
  debug(message: string, fields?: LogFields): void {
    this.log("debug", message, fields);
  }

  /** `log("info", …)`. */
  info(message: string, fields?: LogFields): void {
    this.log("info", message, fields);
  }

  /** `log("warn", …)`. */
  warn(message: string, fields?: LogFields): void {
    this.log("warn", message, fields);
  }

  /** `log("error", …)`. */
  error(message: string, fields?: LogFields): void {
    this.log("error", message, fields);
  }

  /** A logger writing to the same place with `fields` added to every line (e.g. a component). */
  with(fields: LogFields): Log {
    return new Log({
      format: this.format,
      level: this.level,
      write: this.#write,
      now: this.#now,
      fields: { ...this.#fields, ...fields },
    });
  }

  /** The `(level, message) => void` callback the pipeline stages take (lib/logger.ts). */
  get logger(): Logger {
    return (level, message) => this.log(level, message);
  }
}

function jsonLine(now: Date, level: LogLevel, msg: string, fields: LogFields): string {
  return JSON.stringify({ ts: now.toISOString(), level, msg, fields }, jsonValue);
}

function textLine(message: string, fields: LogFields): string {
  // One event, one line: a newline or control character in a message (a peer's text, an
  // error's) is escaped, never written.
  let line = TEXT_PREFIX + printable(message);
  for (const [key, raw] of Object.entries(fields)) {
    const value = jsonValue(key, raw);
    const text = typeof value === "string" ? value : JSON.stringify(value, jsonValue);
    // Quote what would not survive splitting the line on spaces.
    line += ` ${key}=${/^[^\s"=]+$/.test(text ?? "") ? text : JSON.stringify(text ?? "")}`;
  }
  return line;
}

/** JSON.stringify replacer: bigints (exact as numbers, else as strings) and errors. */
function jsonValue(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
      ? Number(value)
      : value.toString();
  }
  if (value instanceof Error) return value.message;
  return value;
}
