/**
 * The image runs the agent in the environment the systemd unit gives it: each variant of
 * packaging/Containerfile sets every variable of the unit's Environment= lines, to the same value.
 */
import assert from "node:assert/strict";
import { assignments, packagedEnvironment } from "./_packaging.ts";

const CONTAINERFILE = new URL("../packaging/Containerfile", import.meta.url);

/** The ENV variables of each stage (`FROM … AS name`), continuation lines joined. */
function stageEnvironments(text: string): Map<string, Record<string, string>> {
  const stages = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  const instructions = text.replace(/\\\n/g, " ").split("\n").map((line) => line.trim());
  for (const line of instructions) {
    const from = /^FROM\s+\S+\s+AS\s+(\S+)/i.exec(line);
    if (from) stages.set(from[1], current = {});
    else if (/^FROM\s/i.test(line)) current = undefined;
    else if (/^ENV\s/i.test(line) && current) Object.assign(current, assignments(line.slice(4)));
  }
  return stages;
}

Deno.test("every image variant sets the unit's environment", () => {
  const unit = packagedEnvironment();
  assert.ok(Object.keys(unit).length > 0, "the unit sets no Environment=");
  const stages = stageEnvironments(Deno.readTextFileSync(CONTAINERFILE));
  assert.deepEqual([...stages.keys()].sort(), ["compiled", "source"]);
  for (const [stage, env] of stages) {
    for (const [name, value] of Object.entries(unit)) {
      assert.equal(env[name], value, `stage ${stage}: ${name}`);
    }
  }
});
