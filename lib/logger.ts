/**
 * The logging callback the shipping stages are handed (they do no I/O of their own).
 *
 * @module
 */

/** Severity of a log line. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Receives one line, without a trailing newline. */
export type Logger = (level: LogLevel, message: string) => void;

/** A logger that drops everything. */
export const silentLogger: Logger = () => {};
