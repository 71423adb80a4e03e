/**
 * Splits command-line arguments into flag tokens, as node:util's `parseArgs` does in its
 * non-strict `tokens` mode (lib/options.ts gives the meaning and the errors). node:util would
 * load Node's compatibility layer into every agent for this alone; tests/flag_tokens_test.ts
 * holds the two to the same tokens on random argument lists.
 *
 * @example
 * ```ts
 * import { flagTokens } from "./flag_tokens.ts";
 * flagTokens(["--ring-bytes", "4MiB", "-h"], new Set(["ring-bytes"]), { h: "help" });
 * // [{ kind: "option", name: "ring-bytes", rawName: "--ring-bytes", value: "4MiB", inlineValue: false, index: 0 },
 * //  { kind: "option", name: "help", rawName: "-h", value: undefined, inlineValue: undefined, index: 2 }]
 * ```
 *
 * @module
 */

/** One argument's meaning, or one letter's of a group of short flags (`-ab`). */
export type FlagToken =
  | {
    kind: "option";
    /** The long name (`ring-bytes`), or the letter of an unknown short flag. */
    name: string;
    /** As written: `--ring-bytes`, `-h`; `--name` for `--name=value`. */
    rawName: string;
    /** `--name=value`'s value, or the next argument for a flag that takes one. */
    value: string | undefined;
    /** True for `--name=value`, false for a value from the next argument. */
    inlineValue: boolean | undefined;
    index: number;
  }
  | { kind: "positional"; value: string; index: number }
  | { kind: "option-terminator"; index: number };

/**
 * @param args the arguments after the command
 * @param takesValue long names of the flags that take a value (the others are switches); each
 *   of two letters or more, so that no short flag takes a value
 * @param shortNames long name of each one-letter switch (`{ h: "help" }`)
 * @throws {RangeError} for a one-letter name in `takesValue`
 */
export function flagTokens(
  args: readonly string[],
  takesValue: ReadonlySet<string>,
  shortNames: Readonly<Record<string, string>>,
): FlagToken[] {
  for (const name of takesValue) {
    if (name.length < 2) {
      throw new RangeError(`Flag --${name} takes a value: name it with 2 letters or more`);
    }
  }
  const tokens: FlagToken[] = [];
  const queue = [...args];
  // A group "-ab" goes back into the queue as "-a", "-b": their tokens keep the group's index.
  let index = -1;
  let groupLeft = 0;
  while (queue.length > 0) {
    const arg = queue.shift()!;
    if (groupLeft > 0) groupLeft--;
    else index++;
    if (arg === "--") {
      tokens.push({ kind: "option-terminator", index });
      for (const value of queue) tokens.push({ kind: "positional", value, index: ++index });
      break;
    }
    if (arg.length === 2 && arg[0] === "-") {
      const letter = arg[1];
      const name = Object.hasOwn(shortNames, letter) ? shortNames[letter] : letter;
      tokens.push({
        kind: "option",
        name,
        rawName: arg,
        value: undefined,
        inlineValue: undefined,
        index,
      });
      continue;
    }
    if (arg.length > 2 && arg[0] === "-" && arg[1] !== "-") {
      const letters = Array.from({ length: arg.length - 1 }, (_, i) => `-${arg.charAt(i + 1)}`);
      queue.unshift(...letters);
      groupLeft = letters.length;
      continue;
    }
    if (arg.length > 2 && arg.startsWith("--")) {
      // An "=" after the first letter makes a value, split at the first "=": "--=x" is a flag
      // named "=x", "--==" one named "" with the value "=".
      if (arg.indexOf("=", 3) >= 0) {
        const equals = arg.indexOf("=");
        const name = arg.slice(2, equals);
        const value = arg.slice(equals + 1);
        tokens.push({
          kind: "option",
          name,
          rawName: `--${name}`,
          value,
          inlineValue: true,
          index,
        });
        continue;
      }
      const name = arg.slice(2);
      // The next argument is the value whatever it looks like; options.ts refuses one like "--x".
      const value = takesValue.has(name) ? queue.shift() : undefined;
      tokens.push({
        kind: "option",
        name,
        rawName: arg,
        value,
        inlineValue: value === undefined ? undefined : false,
        index,
      });
      if (value !== undefined) index++;
      continue;
    }
    tokens.push({ kind: "positional", value: arg, index });
  }
  return tokens;
}
