/**
 * bench/decompose.sh builds this checkout once per patch of bench/decompose/, each taking one
 * part of the agent's work out. A patch the code has moved away from would fail only when
 * someone runs the decomposition; this test fails first.
 */
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;
const dir = "bench/decompose";
const patches = [...Deno.readDirSync(`${root}${dir}`)]
  .map((entry) => entry.name)
  .filter((name) => name.endsWith(".patch"))
  .sort();

Deno.test("bench/decompose has its patches", () => {
  assert.deepEqual(patches, [
    "noattribution.patch",
    "norecord.patch",
    "noshipping.patch",
    "nostate.patch",
  ]);
});

for (const name of patches) {
  Deno.test(`${dir}/${name} applies to this checkout`, async () => {
    const { code, stderr } = await new Deno.Command("git", {
      args: ["apply", "--check", `${dir}/${name}`],
      cwd: root,
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(code, 0, new TextDecoder().decode(stderr));
  });
}
