/**
 * The dependency map of a cluster, aggregated in ClickHouse (collector/cluster/clickhouse_graph.ts),
 * against the SQLite collector's on the same batches (tests/_graph_scenario.ts), on a real local
 * cluster (3 JetStream nodes, ClickHouse; no kernel). Under CI the servers must be there.
 */
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { createClient } from "@clickhouse/client";
import { startLocalCluster } from "../collector/cluster/local_cluster.ts";
import { type ClusterNode, startClusterNode } from "../collector/cluster/node.ts";
import { ClickHouseStore } from "../collector/cluster/clickhouse_store.ts";
import { addressGroupSql, quote } from "../collector/cluster/clickhouse_graph.ts";
import { addressGroup, BLOCKS, type EdgeStats, type GraphSource } from "../collector/graph.ts";
import { runGraph } from "../collector/graph_cli.ts";
import { SqliteGraphSource } from "../collector/graph_sqlite.ts";
import { FlowStore, type StoredFlow } from "../collector/store.ts";
import { formatIp } from "../lib/map_layout.ts";
import { nsAt } from "./_batches.ts";
import { clusterServersInstalled, postUntilStored, testBatch, waitUntil } from "./_cluster.ts";
import {
  assertScenarioEdgeFlows,
  byEnds,
  SCENARIO_EDGES,
  SCENARIO_IMPOSTOR_BATCH,
  SCENARIO_LATE_BATCH,
  SCENARIO_RANGE,
  scenarioBatches,
  scenarioEdges,
  withScenario,
} from "./_graph_scenario.ts";

const ignore = !clusterServersInstalled() && Deno.env.get("CI") === undefined;

/**
 * Addresses at the edges of every block of the address groups: its first and last address, and
 * the ones just outside, each IPv4 one also IPv4-mapped; and a few anywhere.
 */
function boundaryAddresses(): string[] {
  const out = ["8.8.8.8", "2606:4700::1", "::", "::ffff:8.8.8.8", "0.0.0.0", "255.255.255.255"];
  for (const block of BLOCKS) {
    const first = block.bytes.slice();
    const last = block.bytes.slice();
    for (let bit = block.bits; bit < first.length * 8; bit++) {
      const mask = 0x80 >> (bit & 7);
      first[bit >> 3] &= ~mask;
      last[bit >> 3] |= mask;
    }
    const step = (bytes: Uint8Array, by: number) => {
      const out = bytes.slice();
      for (let i = out.length - 1; i >= 0; i--) {
        const v = out[i] + by;
        out[i] = v & 0xff;
        if (v >= 0 && v <= 0xff) break;
      }
      return out;
    };
    for (const bytes of [first, last, step(first, -1), step(last, 1)]) {
      out.push(formatIp(bytes));
      if (bytes.length === 4) out.push(`::ffff:${formatIp(bytes)}`);
    }
  }
  return out;
}

Deno.test({
  name: "ClickHouse groups unattributed addresses exactly as addressGroup does",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  await using cluster = await startLocalCluster();
  const client = createClient({ url: cluster.clickhouseUrl });
  try {
    const addresses = boundaryAddresses();
    const result = await client.query({
      query: `SELECT ip, ${addressGroupSql("ip")} AS node FROM (SELECT arrayJoin([${
        addresses.map(quote).join(", ")
      }]) AS ip)`,
      format: "JSONEachRow",
    });
    const rows = await result.json<{ ip: string; node: string }>();
    assert.deepEqual(
      rows.map((r) => [r.ip, r.node]),
      addresses.map((ip) => [ip, addressGroup(ip)]),
    );
  } finally {
    await client.close();
  }
});

Deno.test({
  name: "a cluster's dependency map is the SQLite collector's for the same batches",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using cluster = await startLocalCluster();
  // The scenario's clock: its flows are at the start of 2026, and its held flows expire when
  // the test moves the clock on, as the SQLite collector's did in withScenario.
  let nowNs = nsAt(400);
  const nodes: ClusterNode[] = [];
  const store = await ClickHouseStore.open(cluster.clickhouseUrl);
  try {
    for (const name of ["a", "b"]) {
      nodes.push(
        await startClusterNode({
          natsServers: cluster.natsUrls,
          clickhouseUrl: cluster.clickhouseUrl,
          nodeName: name,
          port: 0,
          holdSeconds: 1,
          holdRetryMs: 100,
          tickMs: 100,
          now: () => nowNs,
          logger: () => {},
        }),
      );
    }
    const lagged = async (consumer: "attribution" | "hold" | "clickhouse") =>
      (await nodes[0].lag())[consumer];
    const settled = async () =>
      await lagged("attribution") === 0 && await lagged("clickhouse") === 0;
    let i = 0;
    const posted = [...scenarioBatches(), SCENARIO_LATE_BATCH];
    // Once, "no lag" was read with a flow of the late batch not yet in ClickHouse (probably a
    // consumer's count, taken on its leader's copy of the replicated stream, trailing the
    // publish): it is believed only once ClickHouse also holds every flow posted.
    const stored = async (batches: typeof posted) => {
      const keys = new Set(
        (await store.flows({ limit: -1 })).map((f) => `${f.hostname} ${f.cookie}`),
      );
      return batches.every((b) => b.flows.every((f) => keys.has(`${b.hostname} ${f.cookie}`)));
    };
    for (const b of posted.slice(0, -1)) {
      const batch = testBatch(b.hostname, b.sequence, b.flows);
      await postUntilStored(() => [nodes[i++ % nodes.length].url], batch);
    }
    await waitUntil(
      "the scenario attributed and stored",
      async () => await stored(posted.slice(0, -1)) && await settled(),
    );
    nowNs += 2_000_000_000n;
    await waitUntil("the held flows given up on", async () => await lagged("hold") === 0);
    const late = SCENARIO_LATE_BATCH;
    await postUntilStored(
      () => [nodes[0].url],
      testBatch(late.hostname, late.sequence, late.flows),
    );
    await waitUntil("the late batch stored", async () => await stored(posted) && await settled());

    await t.step("its edges are the SQLite collector's, numbers and all", async () => {
      // The given-up flows' verdicts come after their first rows, by the same lagging path.
      const expected = [...SCENARIO_EDGES].sort(byEnds);
      let edges: EdgeStats[] = [];
      await waitUntil("the edges final", async () => {
        edges = await store.edgeStats(SCENARIO_RANGE);
        return isDeepStrictEqual(scenarioEdges(edges).sort(byEnds), expected);
      }, 30_000).catch(() => {}); // the assertion below shows the difference
      assert.deepEqual(scenarioEdges(edges).sort(byEnds), expected);
      await withScenario(async (db) => {
        using sqlite = SqliteGraphSource.open(db);
        assert.deepEqual(
          [...edges].sort(byEnds),
          (await sqlite.edgeStats(SCENARIO_RANGE)).sort(byEnds),
          "every edge, node-s's synthetic ones included",
        );
      });
      assert.deepEqual(await store.edgeStats({ fromNs: nsAt(1000) }), []);
    });

    await t.step(
      "every flow reads back from ClickHouse as from SQLite, field by field",
      async () => {
        const stored = await store.flows({ limit: -1 });
        // Each scenario is built anew, with cookies of its own: those are held to what was posted.
        assert.deepEqual(
          stored.map((f) => `${f.hostname} ${f.cookie}`).sort(),
          posted.flatMap((b) => b.flows.map((f) => `${b.hostname} ${f.cookie}`)).sort(),
        );
        // Where each store keeps a flow (its row ID) and when it came differ; nothing else may.
        const comparable = (flows: StoredFlow[]) =>
          flows.map(({ id: _id, receivedNs: _received, cookie: _cookie, ...f }) => ({
            ...f,
            ownerKey: undefined,
            remoteKey: undefined,
          })).sort((a, b) =>
            a.hostname.localeCompare(b.hostname) || a.localPort - b.localPort ||
            Number(a.tStartNs - b.tStartNs)
          );
        await withScenario((db) => {
          using sqlite = FlowStore.open(db, { readOnly: true });
          assert.deepEqual(comparable(stored), comparable(sqlite.flows({ limit: -1 })));
        });
      },
    );

    await t.step("an edge's latest flows come newest first", async () => {
      await assertScenarioEdgeFlows(store);
    });

    await t.step("late evidence revokes in the map as in the SQLite collector's", async () => {
      const impostor = SCENARIO_IMPOSTOR_BATCH;
      await postUntilStored(
        () => [nodes[1].url],
        testBatch(impostor.hostname, impostor.sequence, impostor.flows),
      );
      const calls = (edges: EdgeStats[], target: string) =>
        edges.find((e) => e.source === "workload:frontend" && e.target === target)?.flows;
      await withScenario(async (db) => {
        using sqlite = SqliteGraphSource.open(db);
        const expected = (await sqlite.edgeStats(SCENARIO_RANGE)).sort(byEnds);
        // The revocation and the impostor's own edge reach the map by separate paths: wait for
        // both, not for the first.
        let edges: EdgeStats[] = [];
        await waitUntil("the map to match the SQLite collector's", async () => {
          edges = (await store.edgeStats(SCENARIO_RANGE)).sort(byEnds);
          return await settled() && isDeepStrictEqual(edges, expected);
        }).catch(() => {}); // the assertions below show the difference
        assert.equal(calls(edges, "ambiguous"), 2, "the calls after the impostor are ambiguous");
        assert.equal(calls(edges, "workload:checkout"), 1, "the call before the impostor stays");
        assert.deepEqual(edges, expected);
        for (const target of ["workload:checkout", "ambiguous"]) {
          const flowsOf = async (source: GraphSource) =>
            (await source.edgeFlows("workload:frontend", target, SCENARIO_RANGE, 10))
              .map((f) => [f.localPort, f.attribution, f.remoteWorkloadId]);
          assert.deepEqual(await flowsOf(store), await flowsOf(sqlite), target);
        }
      }, [impostor]);
    });

    await t.step("flowexporter graph --clickhouse prints it", async () => {
      const out: string[] = [];
      const err: string[] = [];
      const range = ["--from", String(SCENARIO_RANGE.fromNs), "--to", String(SCENARIO_RANGE.toNs)];
      const args = ["--clickhouse", cluster.clickhouseUrl, ...range, "--workload", "frontend"];
      const code = await runGraph([...args, "--format", "dot"], {
        out: (l) => out.push(l),
        err: (l) => err.push(l),
      });
      assert.equal(code, 0, err.join("\n"));
      assert.deepEqual(out.filter((l) => l.includes(" -> ")).length, 2);
    });

    await t.step("a node serves it at /v1/graph", async () => {
      const range = `from=${SCENARIO_RANGE.fromNs}&to=${SCENARIO_RANGE.toNs}`;
      const res = await fetch(`${nodes[1].url}/v1/graph?${range}&workload=frontend`);
      assert.equal(res.status, 200);
      const graph = await res.json();
      assert.deepEqual(
        graph.edges.map((e: { source: string; target: string }) => `${e.source} ${e.target}`)
          .sort(),
        ["workload:frontend ambiguous", "workload:frontend workload:checkout"],
      );
    });
  } finally {
    await store.close();
    await Promise.all(nodes.map((n) => n.close()));
  }
});
