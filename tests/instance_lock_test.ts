import assert from "node:assert/strict";
import {
  acquireInstanceLock,
  inspectInstanceLock,
  InstanceLockError,
} from "../cli/instance_lock.ts";

const MODULE = new URL("../cli/instance_lock.ts", import.meta.url).href;
const ERROR_TEXT = new URL("../lib/error_text.ts", import.meta.url).href;

/** A second agent in miniature: takes the lock, says so, holds it until killed. */
const HOLDER = `
import { acquireInstanceLock } from ${JSON.stringify(MODULE)};
import { errorText } from ${JSON.stringify(ERROR_TEXT)};
try {
  acquireInstanceLock(Deno.args[0]);
} catch (error) {
  console.error(errorText(error));
  Deno.exit(3);
}
console.log("locked " + Deno.pid);
setInterval(() => {}, 60_000);
`;

interface Holder {
  child: Deno.ChildProcess;
  /** First stdout line, or null when the process exited first. */
  firstLine: Promise<string | null>;
}

function holderArgs(script: string, lockPath: string): string[] {
  return ["run", "--quiet", "--no-config", "--allow-read", "--allow-write", script, lockPath];
}

function spawnHolder(script: string, lockPath: string): Holder {
  const child = new Deno.Command(Deno.execPath(), {
    args: holderArgs(script, lockPath),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const firstLine = (async () => {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      text += value;
      const nl = text.indexOf("\n");
      if (nl >= 0) {
        reader.releaseLock();
        return text.slice(0, nl);
      }
    }
  })();
  return { child, firstLine };
}

async function withTempDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-lock-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("A second agent refuses to start while the first holds the lock", async (t) => {
  await withTempDir(async (dir) => {
    const script = `${dir}/holder.ts`;
    const lock = `${dir}/flowexporter.lock`;
    await Deno.writeTextFile(script, HOLDER);

    const first = spawnHolder(script, lock);
    const line = await first.firstLine;
    assert.equal(line, `locked ${first.child.pid}`);

    await t.step("a second process exits with the holder's pid in its message", async () => {
      const output = await new Deno.Command(Deno.execPath(), {
        args: holderArgs(script, lock),
        stdin: "null",
      }).output();
      assert.equal(output.code, 3);
      assert.equal(new TextDecoder().decode(output.stdout), "");
      assert.equal(
        new TextDecoder().decode(output.stderr).trim(),
        `Another flowexporter (pid ${first.child.pid}) is running: lock ${lock} is held (stop it first)`,
      );
    });

    await t.step("this process is refused too, and inspect sees the holder", () => {
      assert.throws(() => acquireInstanceLock(lock), (error) => {
        assert.ok(error instanceof InstanceLockError);
        assert.equal(error.name, "InstanceLockError");
        assert.equal(error.holderPid, first.child.pid);
        return true;
      });
      assert.deepEqual(inspectInstanceLock(lock), { held: true, pid: first.child.pid });
    });

    await t.step("after the first is killed, the kernel has released the lock", async () => {
      first.child.kill("SIGKILL");
      await first.child.status;
      await first.child.stdout.cancel().catch(() => {});
      await first.child.stderr.cancel();
      assert.deepEqual(inspectInstanceLock(lock), { held: false });
      const third = spawnHolder(script, lock);
      const line = await third.firstLine;
      const why = line === null ? await new Response(third.child.stderr).text() : "";
      assert.equal(line, `locked ${third.child.pid}`, why);
      assert.equal((await Deno.readTextFile(lock)).trim(), String(third.child.pid));
      third.child.kill("SIGKILL");
      await third.child.status;
      await third.child.stderr.cancel();
    });
  });
});

Deno.test("A lock file left by a dead agent does not block a new one", async () => {
  await withTempDir(async (dir) => {
    const lock = `${dir}/flowexporter.lock`;
    await Deno.writeTextFile(lock, "4194303\n"); // above pid_max's default: no such process
    using held = acquireInstanceLock(lock);
    assert.equal(held.path, lock);
    assert.equal((await Deno.readTextFile(lock)).trim(), String(Deno.pid));
    held.close();
    held.close();
    assert.deepEqual(inspectInstanceLock(lock), { held: false });
    using again = acquireInstanceLock(lock);
    assert.equal(again.path, lock);
  });
});

Deno.test("acquireInstanceLock() explains a lock file it cannot open", async () => {
  await withTempDir((dir) => {
    assert.throws(
      () => acquireInstanceLock(`${dir}/missing/flowexporter.lock`),
      new InstanceLockError(
        `Cannot open lock file ${dir}/missing/flowexporter.lock: its directory does not exist (set --lock-file to a writable path)`,
      ),
    );
    assert.deepEqual(inspectInstanceLock(`${dir}/none.lock`), { held: false });
  });
});
