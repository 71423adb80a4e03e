/**
 * The agent's environment as packaged: the systemd unit's `Environment=` lines, which the image,
 * `make run` and `make bench` follow.
 *
 * @module
 */

const UNIT = new URL("../packaging/flowexporter.service", import.meta.url);

/** `NAME=VALUE` words of a line, by name (the unit and the image use no quotes). */
export function assignments(words: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const word of words.trim().split(/\s+/).filter(Boolean)) {
    const eq = word.indexOf("=");
    if (eq <= 0) throw new Error(`Not a NAME=VALUE assignment: ${JSON.stringify(word)}`);
    out[word.slice(0, eq)] = word.slice(eq + 1);
  }
  return out;
}

/** The variables the unit sets for the agent (`Environment=`), by name. */
export function packagedEnvironment(unit = Deno.readTextFileSync(UNIT)): Record<string, string> {
  const lines = unit.split("\n").filter((line) => line.startsWith("Environment="));
  return Object.assign({}, ...lines.map((line) => assignments(line.slice("Environment=".length))));
}
