import assert from "node:assert/strict";
import {
  Liveness,
  readProcessFigures,
  registerProcessMetrics,
  startMetricsServer,
} from "../cli/metrics_server.ts";
import { agentMetrics, MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";

Deno.test("MetricsRegistry renders counters and gauges with HELP and TYPE lines", () => {
  const registry = new MetricsRegistry();
  const flows = registry.counter("t_flows_total", "Flows seen.");
  const spool = registry.gauge("t_spool_bytes", "Bytes spooled.");
  flows.add(250);
  flows.add(5n);
  flows.add();
  spool.set(1024);
  spool.add(-24);
  assert.equal(
    registry.render(),
    [
      "# HELP t_flows_total Flows seen.",
      "# TYPE t_flows_total counter",
      "t_flows_total 256",
      "# HELP t_spool_bytes Bytes spooled.",
      "# TYPE t_spool_bytes gauge",
      "t_spool_bytes 1000",
      "",
    ].join("\n"),
  );
});

Deno.test("MetricsRegistry escapes label values and help text", () => {
  const registry = new MetricsRegistry();
  const c = registry.counter("t_total", 'Help with \\ and\na newline "kept".', ["path"]);
  c.labels('a"b\\c\nd').add(1);
  const text = registry.render();
  assert.ok(text.includes('# HELP t_total Help with \\\\ and\\na newline "kept".\n'), text);
  assert.ok(text.includes('t_total{path="a\\"b\\\\c\\nd"} 1\n'), text);
});

Deno.test("A labelled child is cached, so updating it needs no lookup", () => {
  const registry = new MetricsRegistry();
  const c = registry.counter("t_total", "x", ["source", "map"]);
  const child = c.labels("host", "ip_workload");
  assert.equal(c.labels("host", "ip_workload"), child);
  child.add(2);
  child.add(3);
  assert.ok(registry.render().includes('t_total{source="host",map="ip_workload"} 5\n'));
  assert.throws(() => c.labels("host"), /takes 2 label values, got 1/);
  assert.throws(() => c.add(1), /has labels/);
});

Deno.test("A counter refuses to go down, and setTotal() only moves it up", () => {
  const registry = new MetricsRegistry();
  const c = registry.counter("t_total", "x");
  assert.throws(() => c.add(-1), RangeError);
  c.setTotal(10n);
  c.setTotal(7);
  assert.equal(c.get(), 10);
});

Deno.test("A histogram renders cumulative buckets, sum and count", () => {
  const registry = new MetricsRegistry();
  const h = registry.histogram("t_lag_seconds", "Lag.", [0.1, 1, 10]);
  for (const v of [0.05, 0.1, 0.5, 2, 20]) h.observe(v);
  const lines = registry.render().split("\n");
  assert.deepEqual(lines.slice(2), [
    't_lag_seconds_bucket{le="0.1"} 2',
    't_lag_seconds_bucket{le="1"} 3',
    't_lag_seconds_bucket{le="10"} 4',
    't_lag_seconds_bucket{le="+Inf"} 5',
    "t_lag_seconds_sum 22.65",
    "t_lag_seconds_count 5",
    "",
  ]);
});

Deno.test("MetricsRegistry rejects bad names and second registrations", () => {
  const registry = new MetricsRegistry();
  registry.gauge("t_ok", "x");
  assert.throws(() => registry.gauge("t_ok", "x"), /already registered/);
  assert.throws(() => registry.gauge("bad-name", "x"), /Invalid metric name/);
  assert.throws(() => registry.counter("t_total", "x", ["__reserved"]), /Invalid label name/);
  assert.throws(() => registry.histogram("t_h", "x", []), /Invalid buckets/);
});

Deno.test("onCollect() hooks refresh values at each render, and a failing one is contained", () => {
  const registry = new MetricsRegistry();
  const g = registry.gauge("t_g", "x");
  let n = 0;
  registry.onCollect(() => g.set(++n));
  registry.onCollect(() => {
    throw new Error("source gone");
  });
  assert.ok(registry.render().includes("t_g 1\n"));
  assert.ok(registry.render().includes("t_g 2\n"));
});

Deno.test("agentMetrics() registers every agent metric, with all identity sources from the start", () => {
  const registry = new MetricsRegistry();
  const m = agentMetrics(registry);
  m.flowsCaptured.add(3);
  m.bySource.host.add(2);
  m.bySource["port-map"].add(1);
  m.kernelDrops.setTotal(7n);
  m.identityMapEntries.labels("ip_workload").set(4);
  m.workerLag.observe(0.2);
  const text = registry.render();
  for (
    const name of [
      "flows_captured_total",
      "kernel_drops_total",
      "recursion_misses_total",
      "flows_recovered_total",
      "unfollowed_at_destroy_total",
      "flows_swept_total",
      "stale_states_swept_total",
      "interim_records_total",
      "interim_pass_seconds",
      "state_tracepoint_attached",
      "records_by_identity_source_total",
      "batches_sent_total",
      "batches_failed_total",
      "batches_retried_total",
      "spool_bytes",
      "spool_files",
      "spool_oldest_batch_age_seconds",
      "identity_map_entries",
      "identity_map_capacity",
      "worker_lag_seconds",
    ]
  ) {
    assert.ok(text.includes(`# TYPE flowexporter_${name} `), name);
  }
  assert.ok(text.includes('flowexporter_records_by_identity_source_total{source="host"} 2\n'));
  assert.ok(text.includes('flowexporter_records_by_identity_source_total{source="unknown"} 0\n'));
  assert.ok(text.includes("flowexporter_kernel_drops_total 7\n"));
  assert.ok(text.includes('flowexporter_identity_map_entries{map="ip_workload"} 4\n'));
  assert.ok(text.includes('flowexporter_worker_lag_seconds_bucket{le="0.25"} 1\n'));
});

Deno.test("readProcessFigures() reads CPU time and RSS, even with spaces in the command name", () => {
  const fake: Record<string, string> = {
    // pid (comm) state ppid … utime(14)=250 stime(15)=50
    "/proc/self/stat": "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0",
    "/proc/self/status": "Name:\tdeno\nVmRSS:\t   51200 kB\nThreads:\t3\n",
  };
  assert.deepEqual(readProcessFigures((p) => fake[p]), {
    cpuSeconds: 3,
    residentBytes: 51200 * 1024,
  });
  const real = readProcessFigures();
  assert.ok(real.residentBytes > 1 << 20, `RSS ${real.residentBytes}`);
  assert.ok(real.cpuSeconds >= 0);
});

Deno.test("Liveness turns unhealthy when polls stop or the worker fails", () => {
  let now = 0;
  const live = new Liveness({ pollMs: 100, now: () => now });
  assert.deepEqual(live.status(), { ok: true, reason: "ok" });
  now = 4_000;
  live.polled();
  now = 8_999;
  assert.equal(live.status().ok, true);
  now = 9_100;
  assert.deepEqual(live.status(), { ok: false, reason: "no poll for 5.1 s (limit 5 s)" });
  live.polled();
  live.failed("Cannot poll the flow buffer: errno 9");
  live.failed("later reason is ignored");
  assert.deepEqual(live.status(), {
    ok: false,
    reason: "poll loop stopped: Cannot poll the flow buffer: errno 9",
  });
});

Deno.test("The metrics server serves /metrics and /healthz on loopback", async (t) => {
  const registry = new MetricsRegistry();
  const m = agentMetrics(registry);
  registerProcessMetrics(registry);
  let health = { ok: true, reason: "ok" };
  await using server = startMetricsServer({
    hostname: "127.0.0.1",
    port: 0,
    registry,
    health: () => health,
  });
  assert.equal(server.hostname, "127.0.0.1");
  const base = `http://127.0.0.1:${server.port}`;

  await t.step("GET /metrics returns the exposition format", async () => {
    m.flowsCaptured.add(42);
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
    const text = await res.text();
    assert.ok(text.includes("flowexporter_flows_captured_total 42\n"));
    assert.match(text, /^process_resident_memory_bytes \d+$/m);
    assert.match(text, /^process_cpu_seconds_total [\d.]+$/m);
  });
  await t.step("GET /healthz is 200 ok when healthy", async () => {
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok\n");
  });
  await t.step("GET /healthz is 503 with the reason when not", async () => {
    health = { ok: false, reason: "no poll for 12.0 s (limit 5 s)" };
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), "no poll for 12.0 s (limit 5 s)\n");
  });
  await t.step("other paths are 404 and other methods 405", async () => {
    const missing = await fetch(`${base}/`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    const post = await fetch(`${base}/metrics`, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.body?.cancel();
  });
  await t.step("close() is safe to call twice", async () => {
    await server.close();
    await server.close();
    await assert.rejects(fetch(`${base}/metrics`));
  });
});
