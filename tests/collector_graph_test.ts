import assert from "node:assert/strict";
import { batchCbor, nsAt } from "./_batches.ts";
import {
  assertScenarioEdgeFlows,
  byEnds,
  SCENARIO_EDGES,
  SCENARIO_LATE_BATCH,
  SCENARIO_RANGE,
  scenarioBatches,
  scenarioEdges,
  withScenario,
} from "./_graph_scenario.ts";
import {
  addressGroup,
  buildGraph,
  cachedGraphSource,
  type EdgeStats,
  failureColor,
  formatGraphDot,
  formatGraphJson,
  type Graph,
  type GraphSource,
  nodeLabel,
  parseGraphRequest,
} from "../collector/graph.ts";
import { runGraph } from "../collector/graph_cli.ts";
import { SqliteGraphSource } from "../collector/graph_sqlite.ts";
import { FilterError } from "../collector/query.ts";
import { startCollector } from "../collector/server.ts";

function edgeNames(graph: Graph): string[] {
  return graph.edges.map((e) => `${nodeLabel(e.source)} -> ${nodeLabel(e.target)}`).sort();
}

Deno.test("the graph's edges run client to server with each connection's numbers once", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    const edges = await source.edgeStats(SCENARIO_RANGE);
    assert.deepEqual(scenarioEdges(edges).sort(byEnds), [...SCENARIO_EDGES].sort(byEnds));
  });
});

Deno.test("the graph groups remote ends without a workload instead of hiding them", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    const graph = buildGraph(await source.edgeStats(SCENARIO_RANGE), {
      ...SCENARIO_RANGE,
      limit: 0,
    });
    const groups = graph.nodes.filter((n) => n.kind !== "workload").map((n) => n.label);
    assert.deepEqual(groups.sort(), [
      "ambiguous",
      "external",
      "pending",
      "unattributed: 10.0.0.0/8",
      "unattributed: 172.16.0.0/12",
      "unidentified: node-z",
    ]);
    // node-s's synthetic flows: IPv4 peers in 172.16.0.0/12, IPv6 ones outside any block.
    const synthetic = graph.edges.filter((e) => e.source.startsWith("workload:k8s://"));
    assert.ok(synthetic.some((e) => e.target === "unattributed:172.16.0.0/12"));
    assert.ok(synthetic.some((e) => e.target === "external"));
    const flows = graph.edges.reduce((n, e) => n + e.flows, 0);
    const stored = scenarioBatches().reduce((n, b) => n + b.flows.length, 0) +
      SCENARIO_LATE_BATCH.flows.length;
    // Every flow stored is on an edge but checkout's three inbound reports of frontend's calls
    // and db's report of checkout's: their clients reported them.
    assert.equal(flows, stored - 4);
    assert.equal(graph.truncated, false);
    assert.ok(graph.workloads.includes("payments-v2") && graph.workloads.includes("frontend"));
  });
});

Deno.test("a neighbourhood grows with depth and does not cross groups", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    const stats = await source.edgeStats(SCENARIO_RANGE);
    const around = (depth: number) =>
      buildGraph(stats, { ...SCENARIO_RANGE, focus: "workload:frontend", depth });
    assert.deepEqual(edgeNames(around(1)), ["frontend -> checkout"]);
    assert.deepEqual(around(1).nodes.map((n) => [n.label, n.depth]), [
      ["checkout", 1],
      ["frontend", 0],
    ]);
    assert.deepEqual(edgeNames(around(2)), [
      "checkout -> ambiguous",
      "checkout -> db",
      "checkout -> external",
      "checkout -> payments-v1",
      "checkout -> payments-v2",
      "checkout -> pending",
      "checkout -> unattributed: 10.0.0.0/8",
      "frontend -> checkout",
    ]);
    const three = edgeNames(around(3));
    assert.ok(three.includes("unidentified: node-z -> db"), "db's other clients at depth 3");
    assert.ok(three.includes("unattributed: 10.0.0.0/8 -> payments-v1"));
    assert.ok(
      !three.some((e) => e.startsWith("intruder")),
      "intruder shares only a group with checkout: not a neighbour",
    );
    assert.equal(around(0).edges.length, 0);
    const absent = buildGraph(stats, { focus: "workload:nobody", depth: 2 });
    assert.deepEqual([absent.nodes.length, absent.edges.length], [0, 0]);
  });
});

Deno.test("the graph counts only flows that started in its time range", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    const graph = buildGraph(await source.edgeStats({ fromNs: nsAt(100), toNs: nsAt(140) }), {});
    // checkout's call at 115 s (no owner then), payments-v2's client from 130 s.
    assert.deepEqual(edgeNames(graph), [
      "checkout -> unattributed: 10.0.0.0/8",
      "unattributed: 10.0.0.0/8 -> payments-v2",
    ]);
    assert.equal((await source.edgeStats({ fromNs: nsAt(1000) })).length, 0);
  });
});

Deno.test("an edge's latest flows are the query's rows of that edge, newest first", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    await assertScenarioEdgeFlows(source);
  });
});

Deno.test("buildGraph keeps the largest edges within its limit and says so", () => {
  const edge = (source: string, target: string, bytes: number): EdgeStats => ({
    source,
    target,
    flows: 1,
    bytesToTarget: bytes,
    bytesToSource: 0,
    failed: 0,
    resets: 0,
    rttP50Us: null,
    rttP99Us: null,
  });
  const stats = [
    edge("workload:a", "workload:b", 10),
    edge("workload:a", "workload:c", 1000),
    edge("workload:d", "external", 100),
  ];
  const graph = buildGraph(stats, { limit: 2 });
  assert.deepEqual(graph.edges.map((e) => e.target), ["workload:c", "external"]);
  assert.deepEqual([graph.totalEdges, graph.truncated], [3, true]);
  assert.deepEqual(graph.nodes.map((n) => n.id), [
    "external",
    "workload:a",
    "workload:c",
    "workload:d",
  ]);
  assert.equal(graph.edges[0].width, 8, "the largest edge is the widest");
  assert.ok(graph.edges[1].width > 1 && graph.edges[1].width < 8);
  const near = buildGraph(stats, { focus: "workload:b", depth: 2, limit: 1 });
  assert.deepEqual(near.edges.map((e) => e.target), ["workload:b"], "nearest first, not largest");
});

Deno.test("unattributed addresses are grouped by block, IPv4-mapped ones as IPv4", () => {
  assert.equal(addressGroup("10.200.3.4"), "unattributed:10.0.0.0/8");
  assert.equal(addressGroup("172.31.255.255"), "unattributed:172.16.0.0/12");
  assert.equal(addressGroup("172.32.0.1"), "external");
  assert.equal(addressGroup("192.168.7.1"), "unattributed:192.168.0.0/16");
  assert.equal(addressGroup("100.127.0.1"), "unattributed:100.64.0.0/10");
  assert.equal(addressGroup("100.128.0.1"), "external");
  assert.equal(addressGroup("fd12:3456::1"), "unattributed:fc00::/7");
  assert.equal(addressGroup("fe80::1"), "unattributed:fe80::/10");
  assert.equal(addressGroup("::1"), "unattributed:::1/128");
  assert.equal(addressGroup("::ffff:192.168.1.1"), "unattributed:192.168.0.0/16");
  assert.equal(addressGroup("2606:4700::1"), "external");
  assert.equal(addressGroup("8.8.8.8"), "external");
  assert.equal(nodeLabel("unattributed:10.0.0.0/8"), "unattributed: 10.0.0.0/8");
  assert.equal(nodeLabel("workload:checkout"), "checkout");
  assert.equal(nodeLabel("external"), "external");
});

Deno.test("edge colours go from green through amber to red with the failure rate", () => {
  assert.equal(failureColor(0), "#3f9b6a");
  assert.equal(failureColor(0.1), "#e0a030");
  assert.equal(failureColor(0.5), "#d43d3d");
  assert.equal(failureColor(1), "#d43d3d");
});

Deno.test("parseGraphRequest reads the range, focus, depth and limit, and names a bad one", () => {
  const now = nsAt(1000);
  assert.deepEqual(parseGraphRequest({ from: "10m", workload: "checkout", depth: "2" }, now), {
    fromNs: nsAt(400),
    toNs: undefined,
    focus: "workload:checkout",
    depth: 2,
    limit: undefined,
  });
  assert.equal(
    parseGraphRequest({ node: "unattributed:10.0.0.0/8" }, now).focus,
    "unattributed:10.0.0.0/8",
  );
  const bad = (text: Record<string, string>, message: RegExp) =>
    assert.throws(
      () => parseGraphRequest(text, now),
      (e) => e instanceof FilterError && message.test(e.message),
    );
  bad({ depth: "11" }, /^Invalid depth "11": use a whole number from 0 to 10$/);
  bad({ limit: "-1" }, /^Invalid limit "-1"/);
  bad({ node: "galaxy:far" }, /^Invalid node "galaxy:far": use workload:ID/);
  bad({ workload: "a", node: "external" }, /^Give workload or node, not both$/);
  bad({ from: "soon" }, /^Invalid from time "soon"/);
});

Deno.test("the graph prints as JSON and as Graphviz DOT", async () => {
  await withScenario(async (db) => {
    using source = SqliteGraphSource.open(db);
    const graph = buildGraph(await source.edgeStats(SCENARIO_RANGE), {
      ...SCENARIO_RANGE,
      focus: "workload:frontend",
      depth: 1,
    });
    const json = JSON.parse(
      formatGraphJson(graph).replace(/"(from_ns|to_ns)":(\d+)/g, '"$1":"$2"'),
    );
    assert.equal(json.from_ns, String(SCENARIO_RANGE.fromNs));
    assert.deepEqual(json.nodes, [
      { id: "workload:checkout", kind: "workload", label: "checkout", depth: 1 },
      { id: "workload:frontend", kind: "workload", label: "frontend", depth: 0 },
    ]);
    assert.deepEqual(json.edges, [{
      source: "workload:frontend",
      target: "workload:checkout",
      flows: 3,
      bytes_to_target: 2400,
      bytes_to_source: 10800,
      failed: 1,
      resets: 1,
      failure_rate: 0.6667,
      rtt_p50_us: 100,
      rtt_p99_us: 300,
      width: 8, // the widest: the largest edge on the map
      color: "#d43d3d",
    }]);
    const dot = formatGraphDot(graph);
    assert.equal(dot[0], "digraph flows {");
    assert.ok(
      dot.includes('  "workload:frontend" [label="frontend", penwidth=2];'),
      dot.join("\n"),
    );
    assert.ok(
      dot.includes(
        '  "workload:frontend" -> "workload:checkout" [label="3 flows\\n2.4 kB / 10.8 kB\\n1 failed, 1 resets\\nRTT 100µs / 300µs", penwidth=8, color="#d43d3d"];',
      ),
      dot.join("\n"),
    );
  });
  const quoted = formatGraphDot(buildGraph([{
    source: 'workload:say "hi"\\',
    target: "external",
    flows: 1,
    bytesToTarget: 0,
    bytesToSource: 0,
    failed: 0,
    resets: 0,
    rttP50Us: null,
    rttP99Us: null,
  }], {}));
  assert.ok(
    quoted.includes('  "workload:say \\"hi\\"\\\\" [label="say \\"hi\\"\\\\"];'),
    quoted.join("\n"),
  );
});

Deno.test("flowexporter graph prints the map of a database, and explains bad arguments", async (t) => {
  const run = async (args: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runGraph(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
    return { code, out, err };
  };
  await withScenario(async (db) => {
    const range = ["--from", String(SCENARIO_RANGE.fromNs), "--to", String(SCENARIO_RANGE.toNs)];
    await t.step("--format dot with a workload", async () => {
      const { code, out } = await run([
        "--db",
        db,
        ...range,
        "--workload",
        "frontend",
        "--format",
        "dot",
      ]);
      assert.equal(code, 0);
      assert.equal(out.filter((l) => l.includes(" -> ")).length, 1);
      assert.equal(out.at(-1), "}");
    });
    await t.step("JSON by default, with a limit", async () => {
      const { code, out, err } = await run(["--db", db, ...range, "--limit", "2"]);
      assert.equal(code, 0);
      const graph = JSON.parse(out.join("\n").replace(/"(from_ns|to_ns)":(\d+)/g, '"$1":"$2"'));
      assert.equal(graph.edges.length, 2);
      assert.equal(graph.truncated, true);
      assert.match(err[0], /^Showing 2 of \d+ edges \(raise --limit, 0 for all\)$/);
    });
    await t.step("an unknown workload says so", async () => {
      const { code, err } = await run(["--db", db, ...range, "--workload", "nobody"]);
      assert.equal(code, 0);
      assert.equal(err[0], "No flows of nobody in this time range (check --from and --to)");
    });
  });
  await t.step("bad arguments exit 2, a missing database 1", async () => {
    assert.match(
      (await run(["--format", "svg"])).err[0],
      /^Invalid format "svg": use json or dot$/,
    );
    assert.equal((await run(["--depth", "x"])).code, 2);
    assert.match((await run(["--colour"])).err[0], /see flowexporter graph --help/);
    const missing = await run(["--db", "/nonexistent/flows.db"]);
    assert.equal(missing.code, 1);
    assert.match(
      missing.err[0],
      /^Cannot open database \/nonexistent\/flows\.db: .* \(check --db\)$/,
    );
    assert.match((await run(["--help"])).out[0], /^Usage: flowexporter graph/);
  });
});

Deno.test("cachedGraphSource reuses an aggregation of the same range until it is too old", async () => {
  let calls = 0;
  let fail = false;
  const source: GraphSource = {
    edgeStats: () => {
      calls++;
      return fail ? Promise.reject(new Error("store down")) : Promise.resolve([]);
    },
    edgeFlows: () => Promise.resolve([]),
  };
  let nowMs = 0;
  const cached = cachedGraphSource(source, 1000, () => nowMs);
  await Promise.all([cached.edgeStats({ fromNs: 1n }), cached.edgeStats({ fromNs: 1n })]);
  await cached.edgeStats({ fromNs: 1n });
  assert.equal(calls, 1, "asked while running, and again within the time");
  await cached.edgeStats({ fromNs: 2n });
  assert.equal(calls, 2, "another range");
  nowMs = 1001;
  await cached.edgeStats({ fromNs: 2n });
  assert.equal(calls, 3, "too old");
  fail = true;
  await assert.rejects(cached.edgeStats({ fromNs: 3n }), /store down/);
  fail = false;
  await cached.edgeStats({ fromNs: 3n });
  assert.equal(calls, 5, "a failure is not kept");
});

Deno.test("GET /v1/graph and /v1/graph/flows follow the token rules; the page needs none", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_graph_test_" });
  try {
    await using collector = await startCollector({
      dbPath: `${dir}/flows.db`,
      port: 0,
      token: "graph-token",
      logger: () => {},
      now: () => nsAt(400),
    });
    const auth = { authorization: "Bearer graph-token" };
    const range = `from=${SCENARIO_RANGE.fromNs}&to=${SCENARIO_RANGE.toNs}`;
    for (const b of scenarioBatches()) {
      collector.ingestor.ingestBody(batchCbor(b.hostname, b.sequence, b.flows));
    }
    const denied = await fetch(`${collector.url}/v1/graph?${range}`);
    assert.equal(denied.status, 401);
    await denied.body?.cancel();
    const graph = await fetch(`${collector.url}/v1/graph?${range}&workload=frontend`, {
      headers: auth,
    });
    assert.equal(graph.status, 200);
    assert.equal(graph.headers.get("content-type"), "application/json");
    const body = await graph.json();
    assert.deepEqual(body.edges.map((e: { target: string }) => e.target), ["workload:checkout"]);
    const flows = await fetch(
      `${collector.url}/v1/graph/flows?${range}&source=workload:frontend&target=workload:checkout`,
      { headers: auth },
    );
    const listed = await (await fetch(`${collector.url}/v1/flows?host=node-f`, { headers: auth }))
      .text();
    const rows = await flows.text();
    assert.equal(flows.status, 200);
    // The same objects as GET /v1/flows, newest first.
    assert.deepEqual(
      rows.trim().slice(1, -1).split(",\n"),
      listed.trim().slice(1, -1).split(",\n").reverse(),
    );
    const bad = await fetch(`${collector.url}/v1/graph?depth=99`, { headers: auth });
    assert.equal(bad.status, 400);
    assert.match(await bad.text(), /^Invalid depth "99"/);
    const edgeless = await fetch(`${collector.url}/v1/graph/flows?source=external`, {
      headers: auth,
    });
    assert.equal(edgeless.status, 400);
    assert.match(await edgeless.text(), /^Name the edge: give source and target/);
    const page = await fetch(`${collector.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    assert.match(await page.text(), /<script type="module" src="map.js"><\/script>/);
    for (const asset of ["/map.js", "/map.css", "/cytoscape.esm.min.mjs"]) {
      const response = await fetch(`${collector.url}${asset}`);
      assert.equal(response.status, 200, asset);
      assert.ok((await response.text()).length > 100, asset);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
