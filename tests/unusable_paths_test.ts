/**
 * A path the agent or the collector cannot use stops it with one line naming the option to fix
 * (issue 11, case 8), never a raw OS error such as
 * `Operation not permitted (os error 1): mkdir '…/rejected'`. Each case runs the real command
 * (`main.ts`) and fails before anything is loaded or served.
 */
import assert from "node:assert/strict";
import { CONFIG_SCHEMA } from "../cli/config.ts";
import { COLLECTOR_SCHEMA } from "../collector/config.ts";
import { optionNames } from "../lib/options.ts";
import { CAN_MOUNT_TMPFS, withReadOnlyFs } from "./_tiny_fs.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** The environment without any flowexporter option, and no config file either. */
function cleanEnv(): Record<string, string> {
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("FLOWEXPORTER_")),
  );
  return { ...env, FLOWEXPORTER_CONFIG: "", FLOWEXPORTER_COLLECTOR_CONFIG: "" };
}

/** Runs `flowexporter <args>` to its end; its exit code and standard error. */
async function flowexporter(args: string[]): Promise<{ code: number; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: output.code, stderr: new TextDecoder().decode(output.stderr) };
}

/** Asserts exit code 1 and exactly `line` on standard error. */
async function failsWith(args: string[], line: string): Promise<void> {
  const { code, stderr } = await flowexporter(args);
  assert.deepEqual(stderr.trimEnd().split("\n"), [`flowexporter: ${line}`], stderr);
  assert.equal(code, 1);
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "unusable_paths_test_" });
  try {
    await Deno.writeTextFile(`${dir}/file`, "");
    await Deno.mkdir(`${dir}/dir`);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const agent = (name: keyof typeof CONFIG_SCHEMA.options & string) =>
  optionNames(CONFIG_SCHEMA, name);
const collector = (name: keyof typeof COLLECTOR_SCHEMA.options & string) =>
  optionNames(COLLECTOR_SCHEMA, name);

Deno.test("the names of an option come from its schema: flag, variable, config key", () => {
  assert.equal(agent("spool_dir"), "--spool-dir / FLOWEXPORTER_SPOOL_DIR / spool_dir");
  assert.equal(collector("db"), "--db / FLOWEXPORTER_COLLECTOR_DB / db");
  assert.equal(agent("config"), "--config / FLOWEXPORTER_CONFIG", "no key: the file's own path");
});

Deno.test("flowexporter run names the option of each path it cannot use", async (t) => {
  await withDir(async (dir) => {
    // Usable paths for everything but the one under test; each case stops before the capture.
    const run = (...args: string[]) => [
      "run",
      "--lock-file",
      `${dir}/flowexporter.lock`,
      "--spool-dir",
      `${dir}/spool`,
      "--collector-url",
      "http://127.0.0.1:9/v1/batches",
      ...args,
    ];
    await t.step("a spool directory that is a file", async () => {
      // Before: "Not a directory (os error 20): mkdir '…/journal'".
      await failsWith(
        run("--spool-dir", `${dir}/file`),
        `Cannot use spool directory ${dir}/file (${
          agent("spool_dir")
        }): not a directory; choose a writable directory`,
      );
    });
    await t.step("a spool directory under a file", async () => {
      await failsWith(
        run("--spool-dir", `${dir}/file/spool`),
        `Cannot use spool directory ${dir}/file/spool (${
          agent("spool_dir")
        }): not a directory; choose a writable directory`,
      );
    });
    await t.step("a lock file that is a directory", async () => {
      await failsWith(
        run("--lock-file", `${dir}/dir`),
        `Cannot use lock file ${dir}/dir (${
          agent("lock_file")
        }): it is a directory, not a file; choose a writable file on a local file system`,
      );
    });
    await t.step("a pin directory that is a file", async () => {
      await failsWith(
        run("--pin-dir", `${dir}/file`),
        `Cannot use pin directory ${dir}/file (${
          agent("pin_dir")
        }): a file is in the way; choose a directory on the BPF file system (/sys/fs/bpf)`,
      );
    });
    await t.step("a CA file that does not exist", async () => {
      await failsWith(
        run("--ca-file", `${dir}/missing.pem`),
        `Cannot use CA file ${dir}/missing.pem (${
          agent("ca_file")
        }): no such file or directory; choose a readable file`,
      );
    });
    await t.step("a client key that is a directory", async () => {
      await failsWith(
        run("--client-cert", `${dir}/file`, "--client-key", `${dir}/dir`),
        `Cannot use client key ${dir}/dir (${
          agent("client_key")
        }): it is a directory, not a file; choose a readable file`,
      );
    });
    await t.step("a token file that is a directory", async () => {
      await failsWith(
        run("--token-file", `${dir}/dir`),
        `Cannot use token file ${dir}/dir (${
          agent("token_file")
        }): it is a directory, not a file; choose a readable file`,
      );
    });
    await t.step("a config file that is a directory: a usage error, exit 2", async () => {
      const { code, stderr } = await flowexporter(run("--config", `${dir}/dir`));
      assert.deepEqual(stderr.trimEnd().split("\n"), [
        `flowexporter: Cannot read config file ${dir}/dir: it is a directory, not a file (fix --config)`,
      ]);
      assert.equal(code, 2);
    });
  });
});

Deno.test("flowexporter collector names the option of each path it cannot use", async (t) => {
  await withDir(async (dir) => {
    const serve = (...args: string[]) => [
      "collector",
      "--listen",
      "127.0.0.1:0",
      "--db",
      `${dir}/flows.db`,
      ...args,
    ];
    await t.step("a database that is a directory", async () => {
      // Before: "Cannot open database …: unable to open database file: …".
      await failsWith(
        serve("--db", `${dir}/dir`),
        `Cannot use database ${dir}/dir (${
          collector("db")
        }): it is a directory, not a file; choose a writable file`,
      );
    });
    await t.step("a database under a file", async () => {
      await failsWith(
        serve("--db", `${dir}/file/flows.db`),
        `Cannot use database ${dir}/file/flows.db (${
          collector("db")
        }): not a directory; choose a writable file`,
      );
    });
    await t.step("a TLS key that does not exist", async () => {
      await failsWith(
        serve("--tls-cert", `${dir}/file`, "--tls-key", `${dir}/missing.pem`),
        `Cannot use TLS key ${dir}/missing.pem (${
          collector("tls_key")
        }): no such file or directory; choose a readable file`,
      );
    });
    await t.step("a token file that is a directory", async () => {
      await failsWith(
        serve("--token-file", `${dir}/dir`),
        `Cannot use token file ${dir}/dir (${
          collector("token_file")
        }): it is a directory, not a file; choose a readable file`,
      );
    });
  });
});

Deno.test({
  name: "a spool directory or a database on a read-only file system stops even root",
  // chmod does not stop root; a read-only mount does. Under CI this must run.
  ignore: !CAN_MOUNT_TMPFS && !Deno.env.get("CI"),
  fn: async (t) => {
    await withDir(async (dir) => {
      await withReadOnlyFs(
        async (ro) => await Deno.mkdir(`${ro}/spool`),
        async (ro) => {
          await t.step("the agent's spool directory", async () => {
            await failsWith(
              ["run", "--lock-file", `${dir}/flowexporter.lock`, "--spool-dir", `${ro}/spool`],
              `Cannot use spool directory ${ro}/spool (${
                agent("spool_dir")
              }): read-only file system; choose a writable directory`,
            );
          });
          await t.step("the collector's database", async () => {
            await failsWith(
              ["collector", "--listen", "127.0.0.1:0", "--db", `${ro}/flows.db`],
              `Cannot use database ${ro}/flows.db (${
                collector("db")
              }): read-only file system; choose a writable file`,
            );
          });
        },
      );
    });
  },
});
