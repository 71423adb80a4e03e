/**
 * The error of a command-line mistake, shared by every command.
 *
 * @module
 */

/**
 * A command-line mistake (a bad flag, value or operand); main.ts prints its message and exits 2.
 *
 * @example
 * ```ts
 * import { UsageError } from "./usage_error.ts";
 * throw new UsageError('Unknown command "frob" (see flowexporter --help)');
 * ```
 */
export class UsageError extends Error {
  override name = "UsageError";
}
