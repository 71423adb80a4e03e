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

/** Read by `deno run` only: a compiled binary has the V8 flags it was compiled with. */
const V8_FLAGS = "DENO_V8_FLAGS";

Deno.test("every image variant sets the unit's environment", () => {
  const unit = packagedEnvironment();
  assert.ok(Object.keys(unit).length > 0, "the unit sets no Environment=");
  const stages = stageEnvironments(Deno.readTextFileSync(CONTAINERFILE));
  assert.deepEqual([...stages.keys()].sort(), ["compiled", "source"]);
  for (const [stage, env] of stages) {
    for (const [name, value] of Object.entries(unit)) {
      if (stage === "compiled" && name === V8_FLAGS) {
        assert.equal(env[name], undefined, `stage ${stage}: ${name} is ignored by the binary`);
      } else {
        assert.equal(env[name], value, `stage ${stage}: ${name}`);
      }
    }
  }
});

Deno.test("make dist compiles the unit's V8 flags into the binary", async () => {
  const flags = packagedEnvironment()[V8_FLAGS];
  assert.ok(flags, `the unit sets no ${V8_FLAGS}`);
  // -n prints the command; -o keeps the shims from being built for it.
  const { code, stdout, stderr } = await new Deno.Command("make", {
    args: ["-n", "-o", "dist-shims", "dist"],
    cwd: new URL("..", import.meta.url),
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const command = new TextDecoder().decode(stdout).replace(/\\\n\s*/g, " ");
  const compileFlags = /--flags "([^"]*)"/.exec(command)?.[1];
  assert.ok(compileFlags, `no --flags in: ${command}`);
  assert.ok(compileFlags.split(" ").includes(`--v8-flags=${flags}`), compileFlags);
});
