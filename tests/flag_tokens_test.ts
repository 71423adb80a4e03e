import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import fc from "fast-check";
import { flagTokens } from "../lib/flag_tokens.ts";

/** A schema like the agent's: switches, flags with values, and -h. */
const VALUES = ["ring-bytes", "collector-url", "xy"];
const SWITCHES = ["perf-buffer", "verbose"];
const NODE_OPTIONS = {
  help: { type: "boolean" as const, short: "h" },
  ...Object.fromEntries(VALUES.map((name) => [name, { type: "string" as const }])),
  ...Object.fromEntries(SWITCHES.map((name) => [name, { type: "boolean" as const }])),
};

function nodeTokens(args: string[]) {
  return parseArgs({
    args,
    options: NODE_OPTIONS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  })
    .tokens;
}

const ours = (args: string[]) => flagTokens(args, new Set(VALUES), { h: "help" });

Deno.test("flagTokens splits what the agent's flags look like as node:util does", () => {
  for (
    const args of [
      [],
      ["--ring-bytes", "4MiB", "--perf-buffer", "--collector-url=http://c/x=1"],
      ["--ring-bytes"],
      ["--ring-bytes", "--verbose"],
      ["-h"],
      ["-hx", "-", "positional", "--", "--verbose", "-h"],
      ["--verbose=false", "--unknown", "value", "--=x", "---x"],
      ["-x", "y", "--xy", "-y", "-xy"],
    ]
  ) {
    assert.deepEqual(ours(args), nodeTokens(args), JSON.stringify(args));
  }
});

Deno.test("flagTokens agrees with node:util on random argument lists", () => {
  const word = fc.oneof(
    fc.constantFrom(...VALUES, ...SWITCHES, "help", "h", "x", "xy", "unknown", "", "-", "=", "a=b"),
    fc.string({ maxLength: 6 }),
    fc.string({ unit: "binary", maxLength: 3 }), // surrogate pairs split by letter, as node:util does
  );
  const arg = fc.oneof(
    word,
    word.map((w) => `-${w}`),
    word.map((w) => `--${w}`),
    fc.tuple(word, word).map(([a, b]) => `--${a}=${b}`),
  );
  fc.assert(
    fc.property(fc.array(arg, { maxLength: 8 }), (args) => {
      assert.deepEqual(ours(args), nodeTokens(args));
    }),
    { numRuns: 2000 },
  );
});
