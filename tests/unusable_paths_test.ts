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

/** A path that cannot be used: what it is, the options that give it, the line expected. */
type Case = [step: string, args: string[], line: string];

Deno.test("flowexporter run names the option of each path it cannot use", async (t) => {
  await withDir(async (dir) => {
    const file = `${dir}/file`;
    const folder = `${dir}/dir`;
    const missing = `${dir}/missing.pem`;
    const isDir = "it is a directory, not a file";
    // Before, e.g. for the spool: "Not a directory (os error 20): mkdir '…/journal'".
    const cases: Case[] = [
      [
        "a spool directory that is a file",
        ["--spool-dir", file],
        `Cannot use spool directory ${file} (${
          agent("spool_dir")
        }): not a directory; choose a writable directory`,
      ],
      [
        "a spool directory under a file",
        ["--spool-dir", `${file}/spool`],
        `Cannot use spool directory ${file}/spool (${
          agent("spool_dir")
        }): not a directory; choose a writable directory`,
      ],
      [
        "a lock file that is a directory",
        ["--lock-file", folder],
        `Cannot use lock file ${folder} (${
          agent("lock_file")
        }): ${isDir}; choose a writable file on a local file system`,
      ],
      [
        "a pin directory that is a file",
        ["--pin-dir", file],
        `Cannot use pin directory ${file} (${
          agent("pin_dir")
        }): a file is in the way; choose a directory on the BPF file system (/sys/fs/bpf)`,
      ],
      [
        "a CA file that does not exist",
        ["--ca-file", missing],
        `Cannot use CA file ${missing} (${
          agent("ca_file")
        }): no such file or directory; choose a readable file`,
      ],
      [
        "a client key that is a directory",
        ["--client-cert", file, "--client-key", folder],
        `Cannot use client key ${folder} (${
          agent("client_key")
        }): ${isDir}; choose a readable file`,
      ],
      [
        "a token file that is a directory",
        ["--token-file", folder],
        `Cannot use token file ${folder} (${
          agent("token_file")
        }): ${isDir}; choose a readable file`,
      ],
    ];
    // Usable paths for everything but the one under test; each case stops before the capture.
    const run = (args: string[]) => [
      "run",
      ...["--lock-file", `${dir}/flowexporter.lock`, "--spool-dir", `${dir}/spool`],
      ...["--collector-url", "http://127.0.0.1:9/v1/batches", ...args],
    ];
    for (const [step, args, line] of cases) {
      await t.step(step, async () => await failsWith(run(args), line));
    }
    await t.step("a config file that is a directory: a usage error, exit 2", async () => {
      const { code, stderr } = await flowexporter(run(["--config", folder]));
      assert.deepEqual(stderr.trimEnd().split("\n"), [
        `flowexporter: Cannot read config file ${folder}: ${isDir} (fix --config)`,
      ]);
      assert.equal(code, 2);
    });
  });
});

Deno.test("flowexporter collector names the option of each path it cannot use", async (t) => {
  await withDir(async (dir) => {
    const folder = `${dir}/dir`;
    const missing = `${dir}/missing.pem`;
    // Before, for the database: "Cannot open database …: unable to open database file: …".
    const cases: Case[] = [
      [
        "a database that is a directory",
        ["--db", folder],
        `Cannot use database ${folder} (${
          collector("db")
        }): it is a directory, not a file; choose a writable file`,
      ],
      [
        "a database under a file",
        ["--db", `${dir}/file/flows.db`],
        `Cannot use database ${dir}/file/flows.db (${
          collector("db")
        }): not a directory; choose a writable file`,
      ],
      [
        "a TLS key that does not exist",
        ["--tls-cert", `${dir}/file`, "--tls-key", missing],
        `Cannot use TLS key ${missing} (${
          collector("tls_key")
        }): no such file or directory; choose a readable file`,
      ],
      [
        "a token file that is a directory",
        ["--token-file", folder],
        `Cannot use token file ${folder} (${
          collector("token_file")
        }): it is a directory, not a file; choose a readable file`,
      ],
    ];
    for (const [step, args, line] of cases) {
      await t.step(step, async () => {
        await failsWith(
          ["collector", "--listen", "127.0.0.1:0", "--db", `${dir}/flows.db`, ...args],
          line,
        );
      });
    }
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
