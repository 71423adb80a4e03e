/**
 * `flowexporter detach` on the folders alone (a pin directory of plain folders, no kernel): what
 * it removes, and the versioned pin directories' folder, which goes with the last of them.
 * tests/restart_kernel_test.ts holds the real capture's unpinning.
 */
import assert from "node:assert/strict";
import { detach } from "../cli/detach.ts";
import { loadConfig } from "../cli/config.ts";
import { NO_FILES } from "./_option_files.ts";

/** Runs detach on `pinDir` and returns its line. */
function detachLine(pinDir: string, lockFile: string): string {
  const lines: string[] = [];
  const config = loadConfig(["--pin-dir", pinDir, "--lock-file", lockFile], {}, NO_FILES);
  assert.equal(detach(config.values, (line) => lines.push(line)), 0);
  assert.equal(lines.length, 1);
  return lines[0];
}

Deno.test("detach takes the versions' folder along with the last version's pin directory", () => {
  const dir = Deno.makeTempDirSync({ prefix: "flowexporter-detach-" });
  try {
    const root = `${dir}/flowexporter`;
    const lock = `${dir}/lock`;
    for (const version of ["v1", "v2"]) {
      Deno.mkdirSync(`${root}/${version}/capture-v2`, { recursive: true });
      Deno.writeFileSync(`${root}/${version}/ip_workload`, new Uint8Array());
    }
    assert.equal(
      detachLine(`${root}/v1`, lock),
      `flowexporter: detached (removed ${root}/v1/capture-v2, ${root}/v1)`,
    );
    assert.ok(Deno.statSync(`${root}/v2`).isDirectory, "another version's pin directory stays");
    assert.equal(
      detachLine(`${root}/v2`, lock),
      `flowexporter: detached (removed ${root}/v2/capture-v2, ${root}/v2, ${root})`,
    );
    assert.throws(() => Deno.statSync(root), Deno.errors.NotFound, "the folder goes with the last");
    // Left behind by an earlier detach: the empty folder alone goes too.
    Deno.mkdirSync(root);
    assert.equal(detachLine(`${root}/v1`, lock), `flowexporter: detached (removed ${root})`);
    assert.equal(detachLine(`${root}/v1`, lock), `flowexporter: nothing attached under ${root}/v1`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("detach leaves the folder above a pin directory that is not versioned", () => {
  const dir = Deno.makeTempDirSync({ prefix: "flowexporter-detach-" });
  try {
    Deno.mkdirSync(`${dir}/pins/capture-v2`, { recursive: true });
    assert.equal(
      detachLine(`${dir}/pins`, `${dir}/lock`),
      `flowexporter: detached (removed ${dir}/pins/capture-v2, ${dir}/pins)`,
    );
    assert.ok(Deno.statSync(dir).isDirectory, "its folder is not the agent's");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
