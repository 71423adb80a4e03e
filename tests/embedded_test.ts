/**
 * The shared object embedded in a compiled binary, without `deno compile`:
 * ffi/embedded.ts against fake asset directories, and the agent's entry point
 * run with `deno run` from a copy of the sources laid out as a compiled binary
 * sees them (no build output, the asset and its checksum under build/<arch>/).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { embeddedLibrary, EmbeddedLibraryError } from "../ffi/embedded.ts";
import { ABI_VERSION } from "../ffi/symbols.ts";
import { parseFlowJson } from "../lib/json_lines.ts";
import { delay, IS_ROOT, kernelTest, socketRecord } from "./_agent.ts";
import { exchange } from "./_traffic.ts";

const ROOT = new URL("..", import.meta.url).pathname;
/** The library `make build` produced for this machine. */
const BUILT_LIB = `${ROOT}build/libflowexporter.so`;
const ARCH_DIR = Deno.build.arch === "aarch64" ? "arm64" : "amd64";
const NOBODY = 65534;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Writes `bytes` as the asset and a sha256sum manifest for `recorded` (default: the right sum). */
function writeAsset(dir: string, bytes: Uint8Array, recorded = sha256(bytes)): void {
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeFileSync(`${dir}/libflowexporter.so`, bytes);
  Deno.writeTextFileSync(`${dir}/libflowexporter.so.sha256`, `${recorded}  libflowexporter.so\n`);
}

function abiOf(path: string): number {
  const lib = Deno.dlopen(path, { fe_abi_version: { parameters: [], result: "u32" } });
  try {
    return lib.symbols.fe_abi_version();
  } finally {
    lib.close();
  }
}

Deno.test("embeddedLibrary() returns null when there is no checksum manifest", async () => {
  const dir = await Deno.makeTempDir();
  try {
    Deno.writeFileSync(`${dir}/libflowexporter.so`, new Uint8Array([1, 2, 3]));
    assert.equal(embeddedLibrary({ assetDir: dir, runtimeDir: `${dir}/run` }), null);
    assert.equal(embeddedLibrary({ assetDir: `${dir}/absent` }), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddedLibrary() refuses an asset whose SHA-256 differs, in one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = new TextEncoder().encode("not the library that was built");
    const recorded = "0".repeat(64);
    writeAsset(`${dir}/asset`, bytes, recorded);
    for (const memfd of [true, false]) {
      assert.throws(
        () => embeddedLibrary({ assetDir: `${dir}/asset`, memfd, runtimeDir: `${dir}/run` }),
        (err: Error) => {
          assert.ok(err instanceof EmbeddedLibraryError);
          assert.equal(err.name, "EmbeddedLibraryError");
          assert.equal(
            err.message,
            `Cannot use the embedded libflowexporter.so: its SHA-256 ${
              sha256(bytes)
            } differs from ${recorded} recorded at build time (the binary is damaged: rebuild it with make dist)`,
          );
          return true;
        },
      );
    }
    // Refused before anything was extracted.
    assert.throws(() => Deno.statSync(`${dir}/run`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddedLibrary() refuses a manifest that is not one sha256sum line for the library", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = new Uint8Array([7, 7, 7]);
    writeAsset(dir, bytes);
    for (const text of ["", `${sha256(bytes)}  other.so\n`, `${sha256(bytes).slice(1)}  x\n`]) {
      Deno.writeTextFileSync(`${dir}/libflowexporter.so.sha256`, text);
      assert.throws(
        () => embeddedLibrary({ assetDir: dir, runtimeDir: `${dir}/run` }),
        /^EmbeddedLibraryError: Cannot read the checksum manifest .*libflowexporter\.so\.sha256: expected one sha256sum line/,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddedLibrary() loads the real library from a sealed memfd", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = Deno.readFileSync(BUILT_LIB);
    writeAsset(dir, bytes);
    const path = embeddedLibrary({ assetDir: dir, runtimeDir: `${dir}/run` });
    assert.match(path ?? "", /^\/proc\/self\/fd\/\d+$/);
    assert.equal(Deno.readLinkSync(path!), "/memfd:libflowexporter.so (deleted)");
    assert.equal(sha256(Deno.readFileSync(path!)), sha256(bytes));
    // Sealed: not even this process can change what was verified.
    assert.throws(() => {
      using f = Deno.openSync(path!, { write: true });
      f.writeSync(new Uint8Array([0]));
    }, Deno.errors.PermissionDenied);
    assert.equal(abiOf(path!), ABI_VERSION);
    // Nothing touched the disk.
    assert.throws(() => Deno.statSync(`${dir}/run`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddedLibrary() extracts to a private runtime directory without memfd", async (t) => {
  const dir = await Deno.makeTempDir();
  const run = `${dir}/run`;
  const bytes = Deno.readFileSync(BUILT_LIB);
  const sum = sha256(bytes);
  const expectedPath = `${run}/libflowexporter-${sum.slice(0, 16)}.so`;
  const extract = () =>
    embeddedLibrary({ assetDir: `${dir}/asset`, memfd: false, runtimeDir: run });
  const assertGood = (path: string | null) => {
    assert.equal(path, expectedPath);
    const info = Deno.lstatSync(path!);
    assert.ok(info.isFile);
    assert.equal(info.uid, Deno.uid());
    assert.equal(info.mode! & 0o777, 0o500);
    assert.equal(sha256(Deno.readFileSync(path!)), sum);
    assert.equal(Deno.statSync(run).mode! & 0o777, 0o700);
    // No temporary files left behind.
    assert.deepEqual([...Deno.readDirSync(run)].map((e) => e.name), [
      expectedPath.split("/").pop(),
    ]);
  };
  try {
    writeAsset(`${dir}/asset`, bytes);

    await t.step("creates the directory 0700 and a verified copy 0500 that loads", () => {
      assertGood(extract());
      assert.equal(abiOf(expectedPath), ABI_VERSION);
    });

    await t.step("a second run reuses the verified copy without writing", () => {
      const before = Deno.statSync(expectedPath);
      assertGood(extract());
      const after = Deno.statSync(expectedPath);
      assert.equal(after.ino, before.ino);
      assert.equal(after.mtime?.getTime(), before.mtime?.getTime());
    });

    await t.step("a copy changed after extraction is replaced", () => {
      Deno.chmodSync(expectedPath, 0o600);
      Deno.writeFileSync(expectedPath, new TextEncoder().encode("tampered"));
      Deno.chmodSync(expectedPath, 0o500);
      assertGood(extract());
    });

    await t.step("a symlink planted under the final name is replaced, its target untouched", () => {
      const target = `${dir}/target`;
      Deno.writeTextFileSync(target, "keep me");
      Deno.removeSync(expectedPath);
      Deno.symlinkSync(target, expectedPath);
      assertGood(extract());
      assert.equal(Deno.readTextFileSync(target), "keep me");
    });

    await t.step({
      name: "a file planted under the final name by another user is replaced",
      ignore: !IS_ROOT && !Deno.env.get("CI"),
      fn: () => {
        Deno.removeSync(expectedPath);
        Deno.writeFileSync(expectedPath, bytes, { mode: 0o555 });
        Deno.chownSync(expectedPath, NOBODY, NOBODY);
        assertGood(extract());
      },
    });

    await t.step("an existing directory open to others is closed to 0700 first", () => {
      Deno.chmodSync(run, 0o777);
      assertGood(extract());
    });

    await t.step({
      name: "a directory that belongs to another user is refused",
      ignore: !IS_ROOT && !Deno.env.get("CI"),
      fn: () => {
        Deno.chownSync(run, NOBODY, NOBODY);
        assert.throws(
          extract,
          new EmbeddedLibraryError(
            `Cannot extract libflowexporter.so to ${run}: it belongs to uid ${NOBODY}, not to this user (uid 0) (remove it or set RUNTIME_DIRECTORY)`,
          ),
        );
      },
    });

    await t.step("a file in place of the directory is refused", () => {
      const file = `${dir}/file`;
      Deno.writeTextFileSync(file, "");
      assert.throws(
        () => embeddedLibrary({ assetDir: `${dir}/asset`, memfd: false, runtimeDir: file }),
        /Cannot extract libflowexporter\.so to .*\/file: it is not a directory/,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The entry point, as a compiled binary runs it: a copy of the sources with no build output
// and the asset plus its checksum where `deno compile --include` puts them.

/** A copy of the sources with `build/<arch>/` holding `bytes` and the manifest for `recorded`. */
async function compiledLayout(bytes: Uint8Array, recorded?: string): Promise<string> {
  const tree = await Deno.makeTempDir({ prefix: "flowexporter-embedded-" });
  for (const entry of Deno.readDirSync(ROOT)) {
    if (["build", "dist", ".git", "node_modules"].includes(entry.name)) continue;
    const out = await new Deno.Command("cp", { args: ["-a", `${ROOT}${entry.name}`, tree] })
      .output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  }
  Deno.symlinkSync(`${ROOT}node_modules`, `${tree}/node_modules`);
  writeAsset(`${tree}/build/${ARCH_DIR}`, bytes, recorded);
  return tree;
}

/**
 * The environment of the agent: no FLOWEXPORTER_LIB, its own runtime directory, and no
 * config file (not even the default one).
 */
function agentEnv(tree: string): Record<string, string> {
  const env: Record<string, string> = {
    RUNTIME_DIRECTORY: `${tree}/run`,
    NO_COLOR: "1",
    FLOWEXPORTER_CONFIG: "",
  };
  for (const name of ["PATH", "HOME", "DENO_DIR", "CI"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

function agentCommand(tree: string, args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${tree}/main.ts`, ...args],
    clearEnv: true,
    env: agentEnv(tree),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("main.ts --help works from a tree without build output", async () => {
  const tree = await compiledLayout(new Uint8Array([1]));
  try {
    const out = await agentCommand(tree, ["--help"]).output();
    assert.equal(out.code, 0);
    assert.match(new TextDecoder().decode(out.stdout), /^flowexporter \S+: /);
    assert.throws(() => Deno.statSync(`${tree}/run`), Deno.errors.NotFound, "nothing extracted");
  } finally {
    await Deno.remove(tree, { recursive: true });
  }
});

Deno.test("main.ts run refuses a damaged embedded library with one line and exit code 1", async () => {
  const bytes = Deno.readFileSync(BUILT_LIB);
  const tree = await compiledLayout(bytes, "f".repeat(64));
  const pinDir = `/sys/fs/bpf/flowexporter-none-${crypto.randomUUID().slice(0, 8)}`;
  try {
    // Paths of its own: the agent takes its lock before it loads the library.
    const out = await agentCommand(tree, [
      ...["run", "--output", "none", "--pin-dir", pinDir],
      ...["--spool-dir", `${tree}/spool`, "--lock-file", `${tree}/lock`],
      ...["--cert-path", `${tree}/no-identity.pem`],
    ]).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.equal(
      stderr,
      `flowexporter: Cannot use the embedded libflowexporter.so: its SHA-256 ${
        sha256(bytes)
      } differs from ${
        "f".repeat(64)
      } recorded at build time (the binary is damaged: rebuild it with make dist)\n`,
    );
  } finally {
    // The agent checks its pin directory (creating it) before it loads the library.
    await Deno.remove(pinDir).catch(() => {});
    await Deno.remove(tree, { recursive: true });
  }
});

kernelTest("main.ts run loads the embedded library from a memfd and captures a flow", async () => {
  const tree = await compiledLayout(Deno.readFileSync(BUILT_LIB));
  // Its own pin directory, spool, lock file and certificate path: never the defaults.
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  const child = agentCommand(tree, [
    ...["run", "--pin-dir", pinDir, "--poll-ms", "20", "--output", "json"],
    ...["--spool-dir", `${tree}/spool`, "--lock-file", `${tree}/lock`],
    ...["--cert-path", `${tree}/no-identity.pem`],
  ]).spawn();
  const stdout: string[] = [];
  const stderr: string[] = [];
  let exited = false;
  const status = child.status.finally(() => exited = true);
  const reading = Promise.all([
    collectLines(child.stdout, stdout),
    collectLines(child.stderr, stderr),
  ]);
  const until = async (done: () => boolean) => {
    for (const deadline = Date.now() + 30_000; !done(); await delay(20)) {
      if (exited || Date.now() > deadline) {
        throw new Error(
          `The agent ${exited ? "exited" : "timed out"}; its log:\n${stderr.join("\n")}`,
        );
      }
    }
  };
  try {
    await until(() => stderr.some((l) => l.includes("capturing TCP flows")));
    const maps = Deno.readTextFileSync(`/proc/${child.pid}/maps`);
    assert.match(maps, /\/memfd:libflowexporter\.so \(deleted\)/);
    assert.doesNotMatch(maps, /build\/libflowexporter\.so/);
    const x = await exchange("127.0.0.1", 1000, 2000, "client");
    const mine = socketRecord(x.clientPort, x.serverPort);
    await until(() => stdout.some((l) => mine(parseFlowJson(l))));
    const record = parseFlowJson(stdout.find((l) => mine(parseFlowJson(l)))!);
    // Loopback retransmits on a busy machine: bytes_sent is the payload plus those.
    assert.equal(record.bytes_sent, 1000 + (record.bytes_retrans as number));
    assert.equal(record.bytes_acked, 1000);
    assert.equal(record.bytes_received, 2000);
  } finally {
    if (!exited) child.kill("SIGTERM");
    await reading;
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    await Deno.remove(tree, { recursive: true });
  }
  assert.equal((await status).code, 0, stderr.join("\n"));
});

async function collectLines(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    into.push(...lines.filter((l) => l !== ""));
  }
}
