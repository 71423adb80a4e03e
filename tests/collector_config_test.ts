import assert from "node:assert/strict";
import {
  AGENT_ENV_UNDER_COLLECTOR_PREFIX,
  COLLECTOR_ENV_PREFIX,
  COLLECTOR_OPTIONS,
  COLLECTOR_OPTIONS_HELP,
  COLLECTOR_SCHEMA,
  DEFAULT_COLLECTOR_CONFIG_FILE,
} from "../collector/config.ts";
import { CONFIG_SCHEMA } from "../cli/config.ts";
import { envOf, loadOptions, optionsReference, type ReadTextFile } from "../lib/options.ts";
import { MAX_BATCH_BYTES } from "../lib/wire.ts";
import { DEFAULT_LIMITS } from "../collector/defaults.ts";
import { configErrorOf, files, NO_FILES } from "./_option_files.ts";

/** The collector's options from these arguments, environment and files. */
function loadCollectorConfig(args: string[], env: Record<string, string>, read: ReadTextFile) {
  return loadOptions(COLLECTOR_SCHEMA, args, env, read);
}

Deno.test("the collector's options default to what the collector always used", () => {
  const config = loadCollectorConfig([], {}, NO_FILES);
  assert.equal(config.file, null);
  assert.deepEqual(config.values, {
    config: undefined,
    listen: { hostname: "127.0.0.1", port: 9470 },
    db: "flows.db",
    tokenFile: undefined,
    tlsCert: undefined,
    tlsKey: undefined,
    allowUnauthenticated: false,
    maxBodyBytes: 16 << 20,
    maxDecompressedBytes: MAX_BATCH_BYTES,
    maxBatchRecords: DEFAULT_LIMITS.maxBatchRecords,
    maxPendingBodyBytes: DEFAULT_LIMITS.maxPendingBodyBytes,
    maxConcurrentIngests: DEFAULT_LIMITS.maxConcurrentIngests,
    headerTimeoutSeconds: DEFAULT_LIMITS.headerTimeoutSeconds,
    bodyTimeoutSeconds: DEFAULT_LIMITS.bodyTimeoutSeconds,
    maxClockSkewSeconds: 86_400,
    holdSeconds: 120,
    maxHeld: 100_000,
    mergeGapSeconds: 30,
    slackSeconds: 1,
    retentionSeconds: 3600,
    nats: [],
    clickhouseUrl: undefined,
    natsReplicas: 3,
    natsDedupWindowSeconds: 120,
    natsPartitions: 1,
    holdRetryMs: 5000,
    logFormat: "text",
    logLevel: "info",
  });
  assert.ok(Object.values(config.sources).every((s) => s === "default"));
});

Deno.test("the collector's options come from flags over environment over file over defaults", () => {
  const read = files({
    "/c.json": JSON.stringify({ hold_seconds: 300, max_held: 10, db: "/file.db" }),
  });
  const config = loadCollectorConfig(
    ["--hold-seconds", "5"],
    {
      FLOWEXPORTER_COLLECTOR_CONFIG: "/c.json",
      FLOWEXPORTER_COLLECTOR_HOLD_SECONDS: "60",
      FLOWEXPORTER_COLLECTOR_MAX_HELD: "20",
    },
    read,
  );
  assert.equal(config.file, "/c.json");
  assert.deepEqual(
    [
      config.values.holdSeconds,
      config.values.maxHeld,
      config.values.db,
      config.values.slackSeconds,
    ],
    [5, 20, "/file.db", 1],
  );
  assert.deepEqual(
    [
      config.sources.holdSeconds,
      config.sources.maxHeld,
      config.sources.db,
      config.sources.slackSeconds,
    ],
    ["flag", "env", "file", "default"],
  );
});

Deno.test("the collector reads its default config file only when it exists", () => {
  const read = files({ [DEFAULT_COLLECTOR_CONFIG_FILE]: '{"listen": ":9471"}' });
  const config = loadCollectorConfig([], {}, read);
  assert.equal(config.file, DEFAULT_COLLECTOR_CONFIG_FILE);
  assert.deepEqual(config.values.listen, { hostname: "0.0.0.0", port: 9471 });
  assert.equal(loadCollectorConfig(["--config="], {}, read).file, null);
});

Deno.test("--listen takes every form the collector always took", () => {
  const listen = (text: string) =>
    loadCollectorConfig(["--listen", text], {}, NO_FILES).values.listen;
  assert.deepEqual(listen("127.0.0.1:0"), { hostname: "127.0.0.1", port: 0 });
  assert.deepEqual(listen("[::1]:9470"), { hostname: "::1", port: 9470 });
  assert.deepEqual(listen(":9470"), { hostname: "0.0.0.0", port: 9470 });
  assert.deepEqual(listen("collector.internal:80"), { hostname: "collector.internal", port: 80 });
});

Deno.test("the collector's limits take sizes with units, and its switch no value", () => {
  const v = loadCollectorConfig(
    [
      "--max-body-bytes",
      "1MiB",
      "--max-decompressed-bytes=4194304",
      "--max-pending-body-bytes",
      "2GiB",
      "--allow-unauthenticated",
    ],
    { FLOWEXPORTER_COLLECTOR_BODY_TIMEOUT_SECONDS: "5" },
    NO_FILES,
  ).values;
  assert.equal(v.maxBodyBytes, 1 << 20);
  assert.equal(v.maxDecompressedBytes, 4 << 20);
  assert.equal(v.maxPendingBodyBytes, 2 ** 31);
  assert.equal(v.allowUnauthenticated, true);
  assert.equal(v.bodyTimeoutSeconds, 5);
});

Deno.test("--nats takes NATS URLs from a flag, the environment or a file list", () => {
  const nats = (args: string[], env: Record<string, string> = {}, file?: string) =>
    loadCollectorConfig(
      file === undefined ? args : ["--config", "c.json", ...args],
      env,
      (path) => path === "c.json" ? file! : NO_FILES(path),
    ).values.nats;
  assert.deepEqual(nats(["--nats", "nats://a:4222, nats://b:4222"]), [
    "nats://a:4222",
    "nats://b:4222",
  ]);
  assert.deepEqual(nats([], { FLOWEXPORTER_COLLECTOR_NATS: "tls://c:4222" }), ["tls://c:4222"]);
  assert.deepEqual(nats([], {}, '{"nats": ["nats://d:4222"]}'), ["nats://d:4222"]);
  assert.deepEqual(nats(["--nats="]), []);
});

Deno.test("each collector option error names the option and what to fix", async (t) => {
  const cases: [string, () => unknown, string][] = [
    [
      "a NATS URL of another scheme",
      () => loadCollectorConfig(["--nats", "http://a:4222"], {}, NO_FILES),
      'Invalid --nats "http://a:4222": expected comma-separated nats:// or tls:// URLs, or empty for the embedded SQLite collector',
    ],
    [
      "ClickHouse without NATS",
      () => loadCollectorConfig(["--clickhouse-url", "http://127.0.0.1:8123"], {}, NO_FILES),
      "Invalid --clickhouse-url: ClickHouse is the cluster's store (set nats too)",
    ],
    [
      "a listen address without a port",
      () => loadCollectorConfig(["--listen", "localhost"], {}, NO_FILES),
      'Invalid --listen "localhost": expected host:port, [IPv6]:port or :port for every interface',
    ],
    [
      "a word for a number of seconds",
      () => loadCollectorConfig(["--hold-seconds", "soon"], {}, NO_FILES),
      'Invalid --hold-seconds "soon": expected an integer of at least 0',
    ],
    [
      "an unknown flag",
      () => loadCollectorConfig(["--verbose"], {}, NO_FILES),
      "Invalid flag --verbose: no such option (see flowexporter collector --help)",
    ],
    [
      "a misspelt flag",
      () => loadCollectorConfig(["--hold-second", "5"], {}, NO_FILES),
      "Invalid flag --hold-second: no such option (did you mean --hold-seconds?)",
    ],
    [
      "a stray argument",
      () => loadCollectorConfig(["serve"], {}, NO_FILES),
      'Unexpected argument "serve" (options start with --; see flowexporter collector --help)',
    ],
    [
      "a bad environment value",
      () => loadCollectorConfig([], { FLOWEXPORTER_COLLECTOR_RETENTION_SECONDS: "0" }, NO_FILES),
      'Invalid FLOWEXPORTER_COLLECTOR_RETENTION_SECONDS "0": expected a positive integer',
    ],
    [
      "an unknown FLOWEXPORTER_COLLECTOR_ variable",
      () => loadCollectorConfig([], { FLOWEXPORTER_COLLECTOR_LISTN: ":1" }, NO_FILES),
      "Invalid environment variable FLOWEXPORTER_COLLECTOR_LISTN: no such option (did you mean FLOWEXPORTER_COLLECTOR_LISTEN?)",
    ],
    [
      "a bad file value",
      () =>
        loadCollectorConfig(
          [],
          {},
          files({ [DEFAULT_COLLECTOR_CONFIG_FILE]: '{"log_level": "loud"}' }),
        ),
      `Invalid log_level "loud" in ${DEFAULT_COLLECTOR_CONFIG_FILE}: expected debug, info, warn or error`,
    ],
    [
      "a body limit over 1 GiB",
      () => loadCollectorConfig(["--max-body-bytes", "2GiB"], {}, NO_FILES),
      'Invalid --max-body-bytes "2GiB": expected a byte count from 1 to 1GiB, e.g. 16MiB or 16777216',
    ],
    [
      "a certificate without its key",
      () => loadCollectorConfig([], { FLOWEXPORTER_COLLECTOR_TLS_CERT: "/c.pem" }, NO_FILES),
      "Invalid FLOWEXPORTER_COLLECTOR_TLS_CERT: HTTPS needs both tls_cert and tls_key (set tls_key)",
    ],
  ];
  for (const [what, fn, message] of cases) {
    await t.step(what, () => assert.equal(configErrorOf(fn), message));
  }
});

Deno.test("the collector and the agent leave each other's environment variables alone", () => {
  const agentNames = Object.keys(CONFIG_SCHEMA.options).map((name) => envOf(CONFIG_SCHEMA, name));
  assert.deepEqual(
    agentNames.filter((name) => name.startsWith(COLLECTOR_ENV_PREFIX)),
    AGENT_ENV_UNDER_COLLECTOR_PREFIX,
    "the agent's variables under the collector's prefix are the ones the collector leaves alone",
  );
  const config = loadCollectorConfig(
    [],
    { FLOWEXPORTER_COLLECTOR_URL: "http://c/", FLOWEXPORTER_POLL_MS: "abc" },
    NO_FILES,
  );
  assert.ok(Object.values(config.sources).every((s) => s === "default"));
});

Deno.test("the collector's help lists every option with its flag", () => {
  for (const name of Object.keys(COLLECTOR_OPTIONS)) {
    assert.ok(COLLECTOR_OPTIONS_HELP.includes(`--${name.replaceAll("_", "-")}`), name);
  }
  assert.ok(COLLECTOR_OPTIONS_HELP.includes("FLOWEXPORTER_COLLECTOR_HOLD_SECONDS"));
  assert.ok(COLLECTOR_OPTIONS_HELP.split("\n").every((line) => line.length <= 100));
});

Deno.test("docs/collector.md holds the current collector option reference", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/collector.md", import.meta.url));
  assert.ok(
    doc.includes(optionsReference(COLLECTOR_SCHEMA)),
    "docs/collector.md is out of date: paste optionsReference(COLLECTOR_SCHEMA) (collector/config.ts) into it",
  );
});
