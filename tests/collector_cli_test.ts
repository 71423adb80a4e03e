import assert from "node:assert/strict";
import { batchBody, makeFlow } from "./_batches.ts";
import { CollectorProcess } from "./_collector.ts";
import { runCollector } from "../collector/cli.ts";
import { NO_FILES } from "./_option_files.ts";

/** Posts a batch of one flow. */
function postOneFlow(batchesUrl: string): Promise<Response> {
  return fetch(batchesUrl, {
    method: "POST",
    body: batchBody("node-a", 1, [
      makeFlow({ local: "10.0.0.1:1", remote: "10.0.0.2:2", workload: "a", startS: 0, endS: 1 }),
    ]) as BodyInit,
    headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
  });
}

/** Runs `runCollector(args)` in this process, for what returns before it serves. */
async function collectorCommand(args: string[], env: Record<string, string> = {}) {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await runCollector(args, env, NO_FILES, {
    stdout: (text) => stdout.push(text),
    stderr: (text) => stderr.push(text),
  });
  return { code, stdout, stderr };
}

Deno.test("flowexporter collector serves until SIGTERM, then stops cleanly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_cli_test_" });
  try {
    const collector = await CollectorProcess.start(`${dir}/flows.db`, {
      address: { hostname: "127.0.0.1", port: 0 },
      args: ["--hold-seconds", "5"],
    });
    assert.match(collector.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(collector.address.port, 0, "the port the kernel picked, from the log");
    const response = await postOneFlow(collector.batchesUrl);
    assert.equal(response.status, 200, await response.text());
    assert.equal(await collector.stop(), 0);
    assert.match(collector.stderrLines.join("\n"), /collector stopping signal=SIGTERM/);
    assert.ok((await Deno.stat(`${dir}/flows.db`)).size > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("flowexporter collector takes its options from FLOWEXPORTER_COLLECTOR_*", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_cli_test_" });
  try {
    const collector = await CollectorProcess.start(`${dir}/flows.db`, {
      args: ["--log-format", "json"],
      env: { FLOWEXPORTER_COLLECTOR_LOG_LEVEL: "debug" },
    });
    const response = await postOneFlow(collector.batchesUrl);
    assert.equal(response.status, 200, await response.text());
    assert.equal(await collector.stop(), 0);
    const levels = collector.stderrLines.map((line) => JSON.parse(line).level);
    assert.ok(
      levels.includes("debug"),
      `a debug line per batch:\n${collector.stderrLines.join("\n")}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("flowexporter collector refuses bad options with one line and exit code 2", async () => {
  const cases: [string[], Record<string, string>, string][] = [
    [
      ["--listen", "localhost"],
      {},
      'flowexporter: Invalid --listen "localhost": expected host:port, [IPv6]:port or :port for every interface',
    ],
    [
      ["--hold-seconds", "soon"],
      {},
      'flowexporter: Invalid --hold-seconds "soon": expected an integer of at least 0',
    ],
    [
      ["--verbose"],
      {},
      "flowexporter: Invalid flag --verbose: no such option (see flowexporter collector --help)",
    ],
    [
      [],
      { FLOWEXPORTER_COLLECTOR_MAX_HELD: "-1" },
      'flowexporter: Invalid FLOWEXPORTER_COLLECTOR_MAX_HELD "-1": expected an integer of at least 0',
    ],
    [
      ["--tls-key", "/k.pem"],
      {},
      "flowexporter: Invalid --tls-key: HTTPS needs both tls_cert and tls_key (set tls_cert)",
    ],
  ];
  for (const [args, env, line] of cases) {
    const { code, stdout, stderr } = await collectorCommand(args, env);
    assert.equal(code, 2, args.join(" "));
    assert.deepEqual(stdout, []);
    assert.deepEqual(stderr, [line]);
  }
});

Deno.test("flowexporter collector check prints each option's value and source", async () => {
  const { code, stdout, stderr } = await collectorCommand(
    ["check", "--listen", "[::1]:9471", "--max-body-bytes", "1MiB"],
    { FLOWEXPORTER_COLLECTOR_SLACK_SECONDS: "2" },
  );
  assert.equal(code, 0, stderr.join("\n"));
  const printed = JSON.parse(stdout.join("\n"));
  assert.equal(printed.file, null);
  assert.deepEqual(printed.options.listen, { value: "[::1]:9471", source: "flag" });
  assert.deepEqual(printed.options.max_body_bytes, { value: 1 << 20, source: "flag" });
  assert.deepEqual(printed.options.slack_seconds, { value: 2, source: "env" });
  assert.deepEqual(printed.options.db, { value: "flows.db", source: "default" });
  const bad = await collectorCommand(["check", "--slack-seconds", "x"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr[0], /^flowexporter: Invalid --slack-seconds "x": /);
});

Deno.test("flowexporter collector --help shows every option from the schema", async () => {
  const { code, stdout } = await collectorCommand(["--help"]);
  assert.equal(code, 0);
  const help = stdout.join("\n");
  assert.match(help, /^Usage: flowexporter collector \[options\]/);
  for (const flag of ["--listen HOST:PORT", "--token-file PATH", "--retention-seconds N"]) {
    assert.ok(help.includes(flag), flag);
  }
  assert.ok(help.includes("FLOWEXPORTER_COLLECTOR_HOLD_SECONDS"));
});
