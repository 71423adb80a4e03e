/**
 * The text of a caught value for a one-line error: an Error's message, anything else as a string.
 *
 * @module
 */

/** `error.message` for an Error, `String(error)` for anything else thrown. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
