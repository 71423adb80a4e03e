/**
 * Text from a peer (a hostname in a batch, a header, a response body) made safe for a one-line
 * log line or error message.
 *
 * @module
 */

// C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
// overrides and isolates that reorder what a terminal shows: control characters on purpose.
// deno-lint-ignore no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const SHORT: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/**
 * Escapes what could split a line or drive a terminal: a newline becomes `\n`, a carriage
 * return `\r`, a tab `\t`, any other control character (and U+2028, U+2029, the bidirectional
 * controls) `\uXXXX`. Everything else is left as it is.
 *
 * @example
 * ```ts
 * import { printable } from "./printable.ts";
 * printable("node-1\nflowexporter: forged line"); // "node-1\\nflowexporter: forged line"
 * ```
 *
 * @param text any text
 * @returns the text on one line
 */
export function printable(text: string): string {
  return text.replace(
    UNPRINTABLE,
    (c) => SHORT[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}
