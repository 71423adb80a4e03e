import assert from "node:assert/strict";
import { batchBody, makeFlow } from "./_batches.ts";
import { runCollector } from "../collector/cli.ts";

const CLI = new URL("../collector/cli.ts", import.meta.url).href;

/** Starts `runCollector(args)` in a child process; resolves once it listens. */
async function spawnCollector(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { runCollector } from ${JSON.stringify(CLI)};` +
      `Deno.exit(await runCollector(${JSON.stringify(args)}));`,
    ],
    cwd: new URL("..", import.meta.url), // the repository's deno.json resolves npm imports
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  while (!/listening on (\S+)/.test(log)) {
    const { done, value } = await lines.read();
    if (done) throw new Error(`Collector exited before listening: ${log}`);
    log += value;
  }
  const url = /listening on (\S+)/.exec(log)![1];
  const rest = (async () => {
    for (;;) {
      const { done, value } = await lines.read();
      if (done) return log;
      log += value;
    }
  })();
  return { child, url, rest };
}

Deno.test("flowexporter collector serves until SIGTERM, then stops cleanly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_cli_test_" });
  try {
    const { child, url, rest } = await spawnCollector([
      "--listen",
      "127.0.0.1:0",
      "--db",
      `${dir}/flows.db`,
      "--hold-seconds",
      "5",
    ]);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const response = await fetch(`${url}/v1/batches`, {
      method: "POST",
      body: batchBody("node-a", 1, [
        makeFlow({ local: "10.0.0.1:1", remote: "10.0.0.2:2", workload: "a", startS: 0, endS: 1 }),
      ]) as BodyInit,
      headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
    });
    assert.equal(response.status, 200, await response.text());
    child.kill("SIGTERM");
    const status = await child.status;
    assert.equal(status.code, 0);
    assert.match(await rest, /collector stopping signal=SIGTERM/);
    assert.ok((await Deno.stat(`${dir}/flows.db`)).size > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("flowexporter collector refuses bad flags with exit code 2", async () => {
  const errors: string[] = [];
  const original = console.error;
  console.error = (line: string) => errors.push(line);
  try {
    assert.equal(await runCollector(["--listen", "localhost"]), 2);
    assert.equal(await runCollector(["--hold-seconds", "soon"]), 2);
    assert.equal(await runCollector(["--verbose"]), 2);
  } finally {
    console.error = original;
  }
  assert.match(errors[0], /^Invalid --listen "localhost": use HOST:PORT, \[IPV6\]:PORT or :PORT$/);
  assert.match(errors[1], /^Invalid --hold-seconds "soon": use a number >= 0$/);
  assert.match(errors[2], /--verbose.*see flowexporter collector --help/);
});
