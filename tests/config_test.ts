import assert from "node:assert/strict";
import {
  CONFIG_SCHEMA,
  DEFAULT_CONFIG_FILE,
  describeConfig,
  loadConfig,
  OPTIONS,
  OPTIONS_HELP,
  runConfigCheck,
} from "../cli/config.ts";
import { optionsReference } from "../lib/options.ts";
import { configErrorOf, files, NO_FILES } from "./_option_files.ts";

Deno.test("loadConfig() gives the built-in defaults when nothing is set", () => {
  const config = loadConfig([], {}, NO_FILES);
  assert.equal(config.file, null);
  assert.equal(config.help, false);
  assert.equal(config.values.output, "auto");
  assert.equal(config.values.ringBytes, 8 << 20);
  assert.equal(config.values.pollMs, 100);
  assert.equal(config.values.batchInterval, 60_000);
  assert.equal(config.values.collectorUrl, undefined);
  assert.equal(config.values.metricsListen, undefined);
  assert.equal(config.values.lockFile, "/run/flowexporter.lock");
  assert.equal(config.values.spoolDir, "/var/lib/flowexporter/spool");
  assert.equal(config.values.certPath, "/etc/flowexporter/identity.pem");
  assert.equal(config.values.idRule, "uri-san-then-cn");
  assert.ok(Object.values(config.sources).every((s) => s === "default"));
});

Deno.test("loadConfig() applies flags over environment over file over defaults", async (t) => {
  const read = files({
    "/cfg.json": JSON.stringify({
      poll_ms: 30,
      flows_max: 1000,
      verbose: true,
      ring_bytes: "64KiB",
    }),
  });
  const env = {
    FLOWEXPORTER_CONFIG: "/cfg.json",
    FLOWEXPORTER_POLL_MS: "20",
    FLOWEXPORTER_FLOWS_MAX: "2000",
  };
  const config = loadConfig(["--poll-ms", "10"], env, read);

  await t.step("a flag wins over the environment and the file", () => {
    assert.equal(config.values.pollMs, 10);
    assert.equal(config.sources.pollMs, "flag");
  });
  await t.step("the environment wins over the file", () => {
    assert.equal(config.values.flowsMax, 2000);
    assert.equal(config.sources.flowsMax, "env");
  });
  await t.step("the file wins over the defaults", () => {
    assert.equal(config.values.verbose, true);
    assert.equal(config.sources.verbose, "file");
    assert.equal(config.values.ringBytes, 65536);
  });
  await t.step("untouched options keep their defaults", () => {
    assert.equal(config.values.output, "auto");
    assert.equal(config.sources.output, "default");
    assert.equal(config.file, "/cfg.json");
  });
});

Deno.test("loadConfig() reads the default config file only when it exists", () => {
  assert.equal(loadConfig([], {}, NO_FILES).file, null);
  const read = files({ [DEFAULT_CONFIG_FILE]: '{"output": "none"}' });
  const config = loadConfig([], {}, read);
  assert.equal(config.file, DEFAULT_CONFIG_FILE);
  assert.equal(config.values.output, "none");
  assert.equal(loadConfig(["--config="], {}, read).file, null, "an empty --config means no file");
});

Deno.test("loadConfig() lets a flag turn off a switch the file turned on", () => {
  const read = files({ "/c.json": '{"perf_buffer": true}' });
  const config = loadConfig(["--config", "/c.json", "--perf-buffer=false"], {}, read);
  assert.equal(config.values.perfBuffer, false);
  assert.equal(config.sources.perfBuffer, "flag");
  assert.equal(loadConfig([], { FLOWEXPORTER_PERF_BUFFER: "1" }, NO_FILES).values.perfBuffer, true);
});

Deno.test("loadConfig() parses sizes, durations, URLs and listen addresses", () => {
  const v = loadConfig(
    [
      "--ring-bytes=16MiB",
      "--spool-max-bytes",
      "1GiB",
      "--batch-interval",
      "90s",
      "--shutdown-deadline",
      "2500",
      "--collector-url",
      "https://collector.example:8443/v1/batches",
      "--metrics-listen",
      "[::1]:9464",
      "--client-cert",
      "/c.pem",
      "--client-key",
      "/k.pem",
    ],
    {},
    NO_FILES,
  ).values;
  assert.equal(v.ringBytes, 16 << 20);
  assert.equal(v.spoolMaxBytes, 1 << 30);
  assert.equal(v.batchInterval, 90_000);
  assert.equal(v.shutdownDeadline, 2_500);
  assert.equal(v.collectorUrl, "https://collector.example:8443/v1/batches");
  assert.deepEqual(v.metricsListen, { hostname: "::1", port: 9464 });
  assert.equal(v.clientCert, "/c.pem");
  assert.equal(loadConfig(["--batch-interval", "1m"], {}, NO_FILES).values.batchInterval, 60_000);
});

Deno.test("cgroup_path chooses where sock_ops attaches: auto, a directory, or none", () => {
  const cgroupPath = (argv: string[], env: Record<string, string> = {}, read = NO_FILES) =>
    loadConfig(argv, env, read).values.cgroupPath;
  assert.equal(cgroupPath([]), "auto", "the cgroup v2 root by default");
  assert.equal(cgroupPath(["--cgroup-path", "/sys/fs/cgroup/app"]), "/sys/fs/cgroup/app");
  assert.equal(cgroupPath(["--cgroup-path", ""]), undefined, "empty: tracepoints only");
  assert.equal(cgroupPath([], { FLOWEXPORTER_CGROUP_PATH: "" }), undefined);
  const file = (value: unknown) => files({ "/c.json": JSON.stringify({ cgroup_path: value }) });
  assert.equal(cgroupPath(["--config", "/c.json"], {}, file(null)), undefined);
  assert.equal(cgroupPath(["--config", "/c.json"], {}, file("/cg")), "/cg");
  // The option it replaced is gone, everywhere.
  assert.match(
    configErrorOf(() => loadConfig(["--classic-tracepoint"], {}, NO_FILES)),
    /^Invalid flag --classic-tracepoint: no such option/,
  );
  assert.match(
    configErrorOf(() =>
      loadConfig([], {}, files({ [DEFAULT_CONFIG_FILE]: '{"classic_tracepoint": true}' }))
    ),
    /^Invalid config key "classic_tracepoint" in /,
  );
  assert.ok(!OPTIONS_HELP.includes("classic"), "no classic tracepoint option in the help");
});

Deno.test("loadConfig() names the key and its source in every error", async (t) => {
  const cases: [string, () => unknown, string][] = [
    [
      "a misspelt file key, with a suggestion",
      () => loadConfig([], {}, files({ [DEFAULT_CONFIG_FILE]: '{"ring_byts": 8192}' })),
      `Invalid config key "ring_byts" in ${DEFAULT_CONFIG_FILE} (did you mean "ring_bytes"?)`,
    ],
    [
      "a gzip level out of range",
      () => loadConfig(["--gzip-level", "10"], {}, NO_FILES),
      'Invalid --gzip-level "10": expected an integer from 1 to 9',
    ],
    [
      "a bad environment value",
      () => loadConfig([], { FLOWEXPORTER_POLL_MS: "abc" }, NO_FILES),
      'Invalid FLOWEXPORTER_POLL_MS "abc": expected an integer from 1 to 60000',
    ],
    [
      "an unknown FLOWEXPORTER_ variable",
      () => loadConfig([], { FLOWEXPORTER_RING_BYTS: "1" }, NO_FILES),
      "Invalid environment variable FLOWEXPORTER_RING_BYTS: no such option (did you mean FLOWEXPORTER_RING_BYTES?)",
    ],
    [
      "an unknown flag",
      () => loadConfig(["--ring-byts", "8192"], {}, NO_FILES),
      "Invalid flag --ring-byts: no such option (did you mean --ring-bytes?)",
    ],
    [
      "a bad flag value",
      () => loadConfig(["--ring-bytes", "5000"], {}, NO_FILES),
      'Invalid --ring-bytes "5000": expected a power of two from 4KiB to 1GiB, e.g. 8MiB or 8388608',
    ],
    [
      "a bad file value",
      () => loadConfig([], {}, files({ [DEFAULT_CONFIG_FILE]: '{"output": "xml"}' })),
      `Invalid output "xml" in ${DEFAULT_CONFIG_FILE}: expected auto, json or none`,
    ],
    [
      "a duration out of range",
      () => loadConfig(["--batch-interval", "500ms"], {}, NO_FILES),
      'Invalid --batch-interval "500ms": expected a duration from 1s to 10m, e.g. 1m or 60000 (ms)',
    ],
    [
      "a URL of another scheme",
      () => loadConfig([], { FLOWEXPORTER_COLLECTOR_URL: "ftp://x" }, NO_FILES),
      'Invalid FLOWEXPORTER_COLLECTOR_URL "ftp://x": expected an http:// or https:// URL, or empty to keep batches in the spool only',
    ],
    [
      "a flag without its value",
      () => loadConfig(["--poll-ms", "--verbose"], {}, NO_FILES),
      "Missing value for --poll-ms (give it as --poll-ms N)",
    ],
    [
      "a stray argument",
      () => loadConfig(["now"], {}, NO_FILES),
      'Unexpected argument "now" (options start with --; see --help)',
    ],
    [
      "a missing explicit config file",
      () => loadConfig(["--config", "/nope.json"], {}, NO_FILES),
      "Cannot read config file /nope.json: no such file or directory (fix --config)",
    ],
    [
      "a config file that is not JSON",
      () => loadConfig([], {}, files({ [DEFAULT_CONFIG_FILE]: "ring_bytes = 1" })),
      `Cannot parse config file ${DEFAULT_CONFIG_FILE}: `,
    ],
    [
      "a config file that is not an object",
      () => loadConfig([], {}, files({ [DEFAULT_CONFIG_FILE]: "[1]" })),
      `Invalid config file ${DEFAULT_CONFIG_FILE}: expected a JSON object of option names`,
    ],
  ];
  for (const [what, fn, message] of cases) {
    await t.step(what, () => {
      const got = configErrorOf(fn);
      if (message.endsWith(": ")) assert.ok(got.startsWith(message), got);
      else assert.equal(got, message);
    });
  }
});

Deno.test("loadConfig() ignores FLOWEXPORTER_LIB and FLOWEXPORTER_ARGS, which are not options", () => {
  assert.equal(loadConfig([], { FLOWEXPORTER_LIB: "/x.so", HOME: "/root" }, NO_FILES).file, null);
  // The systemd unit's environment file sets FLOWEXPORTER_ARGS for its ExecStart line.
  assert.equal(
    loadConfig([], { FLOWEXPORTER_ARGS: "--output json" }, NO_FILES).values.output,
    "auto",
  );
});

Deno.test("loadConfig() leaves the collector's FLOWEXPORTER_COLLECTOR_* variables alone", () => {
  const config = loadConfig(
    [],
    { FLOWEXPORTER_COLLECTOR_DB: "/x.db", FLOWEXPORTER_COLLECTOR_URL: "http://c:9470/v1/batches" },
    NO_FILES,
  );
  assert.equal(
    config.values.collectorUrl,
    "http://c:9470/v1/batches",
    "collector_url is the agent's",
  );
  assert.equal(config.sources.collectorUrl, "env");
});

Deno.test("loadConfig() refuses a non-loopback metrics address unless allowed", () => {
  assert.equal(
    configErrorOf(() => loadConfig([], { FLOWEXPORTER_METRICS_LISTEN: "0.0.0.0:9464" }, NO_FILES)),
    'Invalid FLOWEXPORTER_METRICS_LISTEN "0.0.0.0:9464": not a loopback address (use 127.0.0.1 or [::1], or set metrics_allow_remote to expose metrics beyond this host)',
  );
  assert.match(
    configErrorOf(() => loadConfig(["--metrics-listen", ":9464"], {}, NO_FILES)),
    /not a loopback/,
  );
  for (const listen of ["127.0.0.1:9464", "localhost:0", "[::1]:1"]) {
    assert.ok(loadConfig(["--metrics-listen", listen], {}, NO_FILES).values.metricsListen);
  }
  const open = loadConfig(
    ["--metrics-listen", "0.0.0.0:9464", "--metrics-allow-remote"],
    {},
    NO_FILES,
  );
  assert.deepEqual(open.values.metricsListen, { hostname: "0.0.0.0", port: 9464 });
});

Deno.test("loadConfig() wants a client certificate and its key together", () => {
  assert.equal(
    configErrorOf(() => loadConfig(["--client-key", "/k.pem"], {}, NO_FILES)),
    "Invalid --client-key: mutual TLS needs both client_cert and client_key (set client_cert)",
  );
});

Deno.test("loadConfig() reports --help without validating the other flags", () => {
  assert.equal(loadConfig(["--poll-ms", "abc", "-h"], {}, NO_FILES).help, true);
});

Deno.test("the help text lists every option with its flag", () => {
  for (const name of Object.keys(OPTIONS)) {
    assert.ok(OPTIONS_HELP.includes(`--${name.replaceAll("_", "-")}`), name);
  }
  assert.ok(OPTIONS_HELP.split("\n").every((line) => line.length <= 100));
});

Deno.test("docs/operations.md holds the current option reference", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/operations.md", import.meta.url));
  assert.ok(
    doc.includes(optionsReference(CONFIG_SCHEMA)),
    "docs/operations.md is out of date: paste optionsReference(CONFIG_SCHEMA) (cli/config.ts) into it",
  );
});

Deno.test("runConfigCheck() prints every value with its source", async () => {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runConfigCheck(
    ["--batch-interval", "2m"],
    { FLOWEXPORTER_LOG_FORMAT: "json" },
    NO_FILES,
    { stdout: (s) => out.push(s), stderr: (s) => err.push(s) },
  );
  assert.equal(code, 0);
  assert.deepEqual(err, []);
  const printed = JSON.parse(out.join("\n"));
  assert.equal(printed.file, null);
  assert.deepEqual(printed.options.batch_interval, { value: 120_000, source: "flag" });
  assert.deepEqual(printed.options.log_format, { value: "json", source: "env" });
  assert.deepEqual(printed.options.collector_url, { value: null, source: "default" });
  assert.deepEqual(Object.keys(printed.options), Object.keys(OPTIONS));
});

Deno.test("runConfigCheck() prints one line and returns 2 for a bad value", async () => {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runConfigCheck([], { FLOWEXPORTER_POLL_MS: "abc" }, NO_FILES, {
    stdout: (s) => out.push(s),
    stderr: (s) => err.push(s),
  });
  assert.equal(code, 2);
  assert.deepEqual(out, []);
  assert.deepEqual(err, [
    'flowexporter: Invalid FLOWEXPORTER_POLL_MS "abc": expected an integer from 1 to 60000',
  ]);
});

Deno.test("config check output read back as a config file gives the same values", () => {
  const first = loadConfig(
    ["--metrics-listen", "127.0.0.1:9464", "--ring-bytes", "1MiB", "--token-file", "/t"],
    {},
    NO_FILES,
  );
  const fileText = JSON.stringify(
    Object.fromEntries(
      Object.entries(describeConfig(first).options)
        .filter(([key]) => key !== "config")
        .map(([key, { value }]) => [key, value]),
    ),
  );
  const second = loadConfig(["--config", "/c.json"], {}, files({ "/c.json": fileText }));
  assert.deepEqual({ ...second.values, config: undefined }, { ...first.values, config: undefined });
  assert.ok(Object.values(second.sources).filter((s) => s === "file").length > 20);
});
