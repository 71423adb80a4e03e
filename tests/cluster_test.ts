/**
 * The cluster collector on a real local cluster (3 JetStream nodes, ClickHouse; no kernel):
 * exactly-once storage across nodes, attribution across nodes, a rebuilt ownership map, a
 * replay after the deduplication window, node and stream-leader failures, and 503 without NATS.
 * Under CI the servers must be there: the tests fail without them.
 */
import assert from "node:assert/strict";
import { startLocalCluster } from "../collector/cluster/local_cluster.ts";
import { type ClusterNode, startClusterNode } from "../collector/cluster/node.ts";
import {
  ClickHouseStore,
  writeFlowRow,
  writeVerdict,
} from "../collector/cluster/clickhouse_store.ts";
import { RowBinaryWriter } from "../collector/cluster/row_binary.ts";
import { formatIp } from "../lib/map_layout.ts";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import {
  partitionOf,
  partitionStream,
  StreamConfigError,
  STREAMS,
} from "../collector/cluster/streams.ts";
import { runQuery } from "../collector/query.ts";
import { runCollector } from "../collector/cli.ts";
import { NO_FILES } from "./_option_files.ts";
import type { Logger } from "../lib/logger.ts";
import { Buffer } from "node:buffer";
import { gunzipSync, gzipSync } from "node:zlib";
import { batchConflict, batchDigest } from "../collector/ingest.ts";
import { encodeBatch, encodeFlow, SCHEMA_VERSION } from "../lib/wire.ts";
import { interimOf, postBatch } from "./_batches.ts";
import { CollectorProcess } from "./_collector.ts";
import {
  clusterServersInstalled,
  postUntilStored,
  recentFlow,
  type TestBatch,
  testBatch,
  waitUntil,
} from "./_cluster.ts";

const ignore = !clusterServersInstalled() && Deno.env.get("CI") === undefined;
const DEDUP_WINDOW_SECONDS = 2;

/** Log lines of the in-process nodes, shown when a test fails. */
const logLines: string[] = [];
const logger: Logger = (level, message) => logLines.push(`${level} ${message}`);

function startNode(natsUrls: string[], clickhouseUrl: string | undefined, name: string) {
  return startClusterNode({
    natsServers: natsUrls,
    clickhouseUrl,
    nodeName: name,
    port: 0,
    streams: { duplicateWindowSeconds: DEDUP_WINDOW_SECONDS },
    holdSeconds: 30,
    holdRetryMs: 200,
    publishTimeoutMs: 2000,
    logger,
    tickMs: 200,
  });
}

/** A host's batch of `n` flows from its workload on `ip`, to a server on `server`. */
function hostBatch(host: number, sequence: number, n: number): TestBatch {
  const ip = `10.20.${host}.1`;
  const flows = Array.from({ length: n }, (_, i) =>
    recentFlow({
      local: `${ip}:${30000 + i}`,
      remote: `10.99.0.1:443`,
      workload: `app-${host}`,
      startS: sequence * 10 + i * 0.01,
      endS: sequence * 10 + i * 0.01 + 0.5,
    }));
  return testBatch(`host-${host}`, sequence, flows);
}

/** The server host's batch: inbound flows on 10.99.0.1:443, its heartbeats. */
function serverBatch(sequence: number, fromS: number, toS: number): TestBatch {
  return testBatch("server", sequence, [
    recentFlow({
      local: "10.99.0.1:443",
      remote: "10.20.1.1:30000",
      workload: "api",
      startS: fromS,
      endS: toS,
      direction: "inbound",
    }),
  ]);
}

async function flowsOf(store: ClickHouseStore, host: string) {
  return await store.flows({ hostname: host, limit: -1 });
}

Deno.test({
  name: "cluster nodes store, attribute, rebuild and refuse as they must",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using cluster = await startLocalCluster();
  const nodes: ClusterNode[] = [];
  try {
    nodes.push(await startNode(cluster.natsUrls, cluster.clickhouseUrl, "a"));
    nodes.push(await startNode(cluster.natsUrls, cluster.clickhouseUrl, "b"));
    const store = await ClickHouseStore.open(cluster.clickhouseUrl);
    /** Nothing waits for attribution or the sink (nor, with `hold`, in the hold). */
    const settled = async (hold = false) => {
      const lag = await nodes[0].lag();
      return lag.attribution === 0 && lag.clickhouse === 0 && (!hold || lag.hold === 0);
    };

    await t.step("batches posted round-robin to two nodes are stored exactly once", async () => {
      const server = serverBatch(1, 10, 400);
      await postUntilStored(() => [nodes[0].url], server);
      const batches: TestBatch[] = [];
      for (let seq = 1; seq <= 10; seq++) {
        for (let host = 1; host <= 4; host++) batches.push(hostBatch(host, seq, 50));
      }
      // Each batch to one node, and again (a retry) to the other: JetStream drops the retry
      // within its window; after it, the retry is attributed again and the sink drops it.
      let repeated = 0;
      await Promise.all(batches.map(async (b, i) => {
        assert.equal((await postUntilStored(() => [nodes[i % 2].url], b)).status, "stored");
        const again = await postUntilStored(() => [nodes[(i + 1) % 2].url], b);
        if (again.status === "duplicate") repeated++;
      }));
      const expected = batches.length * 50 + 1;
      await waitUntil(
        "every flow in ClickHouse",
        async () => await store.countFlows() === expected && await settled(true),
      );
      for (let host = 1; host <= 4; host++) {
        const flows = await flowsOf(store, `host-${host}`);
        assert.equal(flows.length, 500, `host-${host}'s flows`);
        assert.equal(new Set(flows.map((f) => f.cookie)).size, 500);
        for (const f of flows) {
          assert.equal(f.attribution, "attributed");
          assert.equal(f.remoteWorkloadId, "api");
        }
      }
      // Both nodes did attribution work and both answer queries.
      const [a, b] = nodes.map((n) => n.stats());
      assert.equal(a.batchesIn + b.batchesIn, 2 * batches.length + 1);
      assert.equal(a.batchesRepeated + b.batchesRepeated, repeated);
      assert.equal(
        a.batchesAttributed + b.batchesAttributed,
        batches.length + 1 + (batches.length - repeated),
      );
      assert.ok(a.batchesAttributed > 0 && b.batchesAttributed > 0, "both nodes attribute");
      const res = await fetch(`${nodes[1].url}/v1/flows?host=host-3&limit=0`);
      assert.equal(res.status, 200);
      assert.equal((await res.json()).length, 500);
    });

    await t.step(
      "a sequence reused with other content is refused with 409 by any node",
      async () => {
        const first = hostBatch(11, 1, 3);
        const other = testBatch("host-11", 1, hostBatch(11, 2, 4).flows);
        assert.equal((await postUntilStored(() => [nodes[0].url], first)).status, "stored");
        const refused = await postBatch(nodes[1].url, other.body);
        const digest = (body: Uint8Array) => batchDigest(gunzipSync(body));
        assert.equal(refused.status, 409);
        // The SQLite collector's words (collector/ingest.ts), with the two digests.
        assert.equal(
          (await refused.text()).trim(),
          batchConflict("host-11", 1, digest(first.body), digest(other.body)).message,
        );
        // The batch as first sent is a retry, on either node; the refused one stored nothing.
        for (const node of nodes) {
          const again = await postBatch(node.url, first.body);
          assert.equal(again.status, 200);
          assert.equal((await again.json()).status, "duplicate");
        }
        await waitUntil("host-11's flows stored", async () => {
          const flows = await flowsOf(store, "host-11");
          return flows.length === 3 && await settled(true);
        });
        assert.deepEqual(
          (await flowsOf(store, "host-11")).map((f) => f.cookie).sort(),
          first.flows.map((f) => f.cookie).sort(),
        );
      },
    );

    await t.step(
      "each batch's loss counters are stored in ClickHouse's batches table",
      async () => {
        const flows = hostBatch(12, 1, 2).flows;
        const cbor = encodeBatch({
          schemaVersion: SCHEMA_VERSION,
          exporterVersion: "0.1.0",
          host: { hostname: "host-12", workloadId: "host:host-12", instanceId: "i-0abc" },
          sequence: 1,
          windowStartNs: flows[0].tStartNs,
          windowEndNs: flows[1].tEndNs,
          recordCount: flows.length,
          clockOffsetNs: 5n,
          loss: { kernelDrops: 3n, recursionMisses: 1n, spoolEvictions: 2 },
        }, flows.map(encodeFlow));
        const body = gzipSync(cbor);
        await postUntilStored(() => [nodes[1].url], {
          hostname: "host-12",
          sequence: 1,
          flows,
          body,
        });
        // A replay of the batch is one row too.
        await postUntilStored(() => [nodes[0].url], {
          hostname: "host-12",
          sequence: 1,
          flows,
          body,
        });
        await waitUntil(
          "host-12's batch stored",
          async () =>
            (await store.batches({ hostname: "host-12" })).length === 1 && await settled(),
        );
        const [batch] = await store.batches({ hostname: "host-12" });
        assert.deepEqual(
          { ...batch, receivedNs: typeof batch.receivedNs },
          {
            hostname: "host-12",
            sequence: 1,
            hostWorkloadId: "host:host-12",
            instanceId: "i-0abc",
            exporterVersion: "0.1.0",
            windowStartNs: flows[0].tStartNs,
            windowEndNs: flows[1].tEndNs,
            recordCount: 2,
            clockOffsetNs: 5n,
            kernelDrops: 3n,
            recursionMisses: 1n,
            spoolEvictions: 2,
            receivedNs: "bigint",
            digest: Buffer.from(batchDigest(cbor)).toString("hex"),
          },
        );
      },
    );

    await t.step("a flows insert sent in pieces stores each row once", async () => {
      // The sink sends a pull's rows as pieces of one insert (collector/cluster/node.ts).
      const flows = hostBatch(13, 1, 3).flows;
      const pieces = flows.map((f, i) => {
        const w = new RowBinaryWriter();
        // A routable remote address is its own ownership key.
        const remoteIp = formatIp(f.remoteIp);
        writeFlowRow(w, "host-13", 1, i, f, remoteIp, remoteIp, f.tEndNs);
        writeVerdict(w, 0, { status: "unattributed" });
        return w.bytes();
      });
      await store.insertFlowRows(pieces);
      const stored = await flowsOf(store, "host-13");
      assert.deepEqual(
        stored.map((f) => [f.cookie, f.attribution]).sort(),
        flows.map((f) => [f.cookie, "unattributed"]).sort(),
      );
    });

    await t.step("flowexporter query --clickhouse reads the cluster's flows", async () => {
      const out: string[] = [];
      const err: string[] = [];
      const args = ["--clickhouse", cluster.clickhouseUrl, "--host", "host-2", "--limit", "0"];
      const io = { out: (line: string) => out.push(line), err: (line: string) => err.push(line) };
      assert.equal(await runQuery([...args, "--format", "json"], io), 0, err.join("\n"));
      assert.equal(out.length, 500);
      const first = JSON.parse(out[0]);
      assert.deepEqual([first.host, first.remote_workload_id], ["host-2", "api"]);
      out.length = 0;
      assert.equal(await runQuery([...args, "--status", "pending"], io), 0);
      assert.equal(out.length, 1, "the table's header only");
    });

    await t.step("an address handed over from A to B is A's before and B's after", async () => {
      // The client's flows first: they wait for the owners' heartbeats, then settle.
      const client = testBatch("client", 1, [
        recentFlow({
          local: "10.30.0.9:40001",
          remote: "10.40.0.5:8080",
          workload: "client",
          startS: 50,
          endS: 51,
        }),
        recentFlow({
          local: "10.30.0.9:40002",
          remote: "10.40.0.5:8080",
          workload: "client",
          startS: 250,
          endS: 251,
        }),
      ]);
      await postUntilStored(() => [nodes[0].url], client);
      const owner = (host: string, workload: string, fromS: number) =>
        testBatch(host, 1, [
          recentFlow({
            local: "10.40.0.5:8080",
            remote: "10.30.0.9:40000",
            workload,
            startS: fromS,
            endS: fromS + 100,
            direction: "inbound",
          }),
        ]);
      await postUntilStored(() => [nodes[1].url], owner("host-a", "workload-a", 0));
      await postUntilStored(() => [nodes[0].url], owner("host-b", "workload-b", 200));
      await waitUntil("the client's flows settled", async () => {
        const flows = await flowsOf(store, "client");
        return flows.length === 2 && flows.every((f) => f.attribution !== "pending");
      });
      const flows = await flowsOf(store, "client");
      assert.deepEqual(
        flows.map((f) => [f.localPort, f.attribution, f.remoteWorkloadId]),
        [[40001, "attributed", "workload-a"], [40002, "attributed", "workload-b"]],
      );
    });

    await t.step(
      "interim records are heartbeats: a long flow is stored once, at its close",
      async () => {
        // A connection from 100 s to 500 s: interim records every 100 s, then the final ones.
        const client = recentFlow({
          local: "10.50.0.1:40000",
          remote: "10.60.0.1:5432",
          workload: "reporting",
          startS: 100,
          endS: 500,
        });
        const server = recentFlow({
          local: "10.60.0.1:5432",
          remote: "10.50.0.1:40000",
          workload: "warehouse",
          startS: 100,
          endS: 500,
          direction: "inbound",
        });
        const at = (s: number) => ({ tEndNs: client.tStartNs + BigInt(s - 100) * 1_000_000_000n });
        let sequence = 0;
        for (const s of [200, 300, 400]) {
          sequence++;
          await postUntilStored(
            () => [nodes[sequence % 2].url],
            testBatch("reporter", sequence, [{ ...interimOf(client, 0), ...at(s) }]),
          );
          await postUntilStored(
            () => [nodes[(sequence + 1) % 2].url],
            testBatch("warehouse", sequence, [{ ...interimOf(server, 0), ...at(s) }]),
          );
        }
        await postUntilStored(() => [nodes[0].url], testBatch("reporter", 4, [client]));
        await postUntilStored(() => [nodes[1].url], testBatch("warehouse", 4, [server]));
        await waitUntil("both ends stored", async () => {
          const rows = [...await flowsOf(store, "reporter"), ...await flowsOf(store, "warehouse")];
          return rows.length === 2 && await settled(true);
        });
        const rows = [...await flowsOf(store, "reporter"), ...await flowsOf(store, "warehouse")];
        assert.deepEqual(
          rows.map((f) => [f.recordKind, f.end, f.tEndNs, f.attribution, f.remoteWorkloadId]),
          [
            ["final", "normal", client.tEndNs, "attributed", "warehouse"],
            ["final", "normal", server.tEndNs, "attributed", "reporting"],
          ],
        );
        assert.deepEqual(await store.flows({ recordKind: "interim" }), [], "none open");
      },
    );

    await t.step("a node that starts rebuilds the ownership map from the log", async () => {
      const node = await startNode(cluster.natsUrls, undefined, "c");
      nodes.push(node);
      assert.equal(await node.replica.caughtUp, true);
      await waitUntil("the node to take attribution work", () => node.stats().caughtUp);
      const before = nodes[0].replica.attributor.ownership;
      const rebuilt = node.replica.attributor.ownership;
      assert.equal(rebuilt.size, before.size);
      for (const key of ["10.40.0.5", "[10.40.0.5]:8080", "10.99.0.1", "[10.99.0.1]:443"]) {
        assert.deepEqual(rebuilt.ranges(key), before.ranges(key), key);
      }
      const at = (s: number) =>
        recentFlow({ local: "1.1.1.1:1", remote: "1.1.1.1:1", workload: "", startS: s, endS: s })
          .tStartNs;
      assert.deepEqual(rebuilt.lookup("[10.40.0.5]:8080", at(50)), {
        kind: "owned",
        workload: "workload-a",
      });
      assert.deepEqual(rebuilt.lookup("[10.40.0.5]:8080", at(250)), {
        kind: "owned",
        workload: "workload-b",
      });
    });

    await t.step("a node without ClickHouse refuses the dependency map in one line", async () => {
      const res = await fetch(`${nodes.at(-1)!.url}/v1/graph`);
      assert.equal(res.status, 404);
      assert.equal(
        (await res.text()).trimEnd(),
        "No dependency map on this node: /v1/graph needs the flows (start the cluster node with --clickhouse-url)",
      );
    });

    await t.step("each node serves its figures at /metrics", async () => {
      const before = nodes[0].stats();
      const res = await fetch(`${nodes[0].url}/metrics`);
      assert.equal(res.status, 200);
      const text = await res.text();
      const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
      assert.equal(value("flowexporter_cluster_batches_in_total"), nodes[0].stats().batchesIn);
      assert.equal(value("flowexporter_cluster_caught_up"), 1);
      assert.ok(value("flowexporter_cluster_map_ranges") > 0);
      for (const consumer of ["attribution", "hold", "clickhouse"]) {
        const lag = value(`flowexporter_cluster_consumer_lag\\{consumer="${consumer}"\\}`);
        assert.ok(Number.isInteger(lag) && lag >= 0, `${consumer} lag ${lag}`);
      }
      // The hold may settle a batch meanwhile: each count lies between the node's before and after.
      const after = nodes[0].stats();
      const held = [["held_flows", "heldFlows"], [
        "held_flows_settled",
        "heldFlowsSettled",
      ]] as const;
      for (const [metric, key] of held) {
        const served = value(`flowexporter_cluster_${metric}_total`);
        assert.ok(before[key] <= served && served <= after[key], `${metric}: ${served}`);
      }
      const sum = (key: "heldFlows" | "heldFlowsSettled") =>
        nodes.reduce((n, node) => n + node.stats()[key], 0);
      assert.ok(sum("heldFlowsSettled") <= sum("heldFlows"), "only held flows are settled");
      const doc = await Deno.readTextFile(new URL("../docs/cluster.md", import.meta.url));
      const documented = [...doc.matchAll(/^\| `(flowexporter_cluster_\w+)` +\| (\w+) /gm)]
        .map((m) => `${m[1]} ${m[2]}`);
      const served = [...text.matchAll(/^# TYPE (flowexporter_cluster_\w+) (\w+)$/gm)]
        .map((m) => `${m[1]} ${m[2]}`);
      assert.deepEqual(documented.sort(), served.sort(), "docs/cluster.md lists every metric");
    });

    await t.step(
      "collector check --nats finds the streams as nodes need them, or says what differs",
      async () => {
        const stderr: string[] = [];
        const out = { stdout: () => {}, stderr: (line: string) => stderr.push(line) };
        const args = [
          "check",
          ...["--nats", cluster.natsUrls.join(","), "--clickhouse-url", cluster.clickhouseUrl],
          ...["--nats-dedup-window-seconds", String(DEDUP_WINDOW_SECONDS)],
        ];
        assert.equal(await runCollector(args, {}, NO_FILES, out), 0, stderr.join("\n"));
        assert.deepEqual(stderr, ["Cluster: streams, consumers and store as expected"]);
        const nc = await connect({ servers: cluster.natsUrls });
        try {
          const jsm = await jetstreamManager(nc);
          const { config } = await jsm.streams.info(STREAMS.ownership);
          await jsm.streams.update(STREAMS.ownership, { ...config, max_age: 60_000_000_000 });
          stderr.length = 0;
          assert.equal(await runCollector(args, {}, NO_FILES, out), 1);
          assert.deepEqual(stderr, [
            "Stream FLOW_OWNERSHIP keeps ownership 60 s, less than the retention 3600 s: a restarted node would rebuild less than the others know",
          ]);
          await jsm.streams.update(STREAMS.ownership, config);
        } finally {
          await nc.close();
        }
      },
    );

    await t.step("a batch replayed after the deduplication window is stored once", async () => {
      const batch = hostBatch(7, 1, 20);
      await postUntilStored(() => [nodes[0].url], batch);
      await waitUntil(
        "the batch stored",
        async () => (await flowsOf(store, "host-7")).length === 20,
      );
      const attributed = () => nodes.reduce((n, node) => n + node.stats().batchesAttributed, 0);
      const before = attributed();
      // JetStream takes it again once its window is over: a later post is "stored" again.
      await waitUntil("JetStream's window over", async () => {
        const res = await postBatch(nodes[1].url, batch.body);
        return res.status === 200 && (await res.json()).status === "stored";
      });
      await waitUntil(
        "the replay attributed and stored",
        async () => attributed() > before && await settled(),
      );
      const flows = await flowsOf(store, "host-7");
      assert.equal(flows.length, 20);
      assert.equal(new Set(flows.map((f) => f.cookie)).size, 20);
    });

    await t.step("late evidence of a second owner revokes an attribution", async () => {
      const owner = (host: string, workload: string, fromS: number, toS: number) =>
        testBatch(host, 1, [
          recentFlow({
            local: "10.50.0.5:9000",
            remote: "10.51.0.1:50000",
            workload,
            startS: fromS,
            endS: toS,
            direction: "inbound",
          }),
        ]);
      await postUntilStored(() => [nodes[0].url], owner("host-x", "workload-x", 50, 150));
      const client = testBatch("client-2", 1, [
        recentFlow({
          local: "10.52.0.1:40000",
          remote: "10.50.0.5:9000",
          workload: "caller",
          startS: 100,
          endS: 101,
        }),
      ]);
      await postUntilStored(() => [nodes[1].url], client);
      const verdict = async () =>
        (await flowsOf(store, "client-2")).map((f) => [f.attribution, f.remoteWorkloadId]);
      await waitUntil("the flow attributed", async () => (await verdict()).length === 1);
      assert.deepEqual(await verdict(), [["attributed", "workload-x"]]);
      await postUntilStored(() => [nodes[1].url], owner("host-y", "workload-y", 90, 160));
      await waitUntil("the attribution revoked", async () => {
        const [[status]] = await verdict();
        return status !== "attributed";
      });
      assert.deepEqual(await verdict(), [["ambiguous", null]]);
    });

    await t.step("without ClickHouse, reads get 503 and batches are still taken", async () => {
      await cluster.killClickHouse();
      const res = await fetch(`${nodes[0].url}/v1/flows?limit=1`);
      assert.equal(res.status, 503);
      assert.ok(Number(res.headers.get("retry-after")) > 0);
      assert.match(await res.text(), /^Cannot read flows: /);
      const graph = await fetch(`${nodes[0].url}/v1/graph?from=1h`);
      assert.equal(graph.status, 503, "the dependency map too");
      assert.ok(Number(graph.headers.get("retry-after")) > 0);
      assert.match(await graph.text(), /^Cannot read flows: /);
      assert.equal(
        (await postUntilStored(() => [nodes[1].url], hostBatch(9, 1, 5))).status,
        "stored",
      );
    });

    await t.step("a node answers 503 with Retry-After while NATS is down", async () => {
      for (const node of cluster.nodes) if (node.clientUrl) await cluster.killNats(node.name);
      const res = await postBatch(nodes[0].url, hostBatch(8, 1, 5).body);
      assert.equal(res.status, 503);
      assert.ok(Number(res.headers.get("retry-after")) > 0);
      assert.match(await res.text(), /JetStream cannot take writes/);
    });
    await store.close();
  } catch (error) {
    console.error(logLines.slice(-40).join("\n"));
    throw error;
  } finally {
    await Promise.all(nodes.map((n) => n.close()));
  }
});

/** The partitions of the test below: its hosts fall in all three (host-1 and server apart). */
const PARTITIONS = 3;

Deno.test({
  name:
    "on partitioned streams, killing a collector node and a stream leader mid-run loses, repeats and misattributes nothing",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using cluster = await startLocalCluster();
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-cluster-test-" });
  const args = [
    ...["--nats", cluster.natsUrls.join(","), "--clickhouse-url", cluster.clickhouseUrl],
    ...["--hold-seconds", "20", "--hold-retry-ms", "200"],
    ...["--nats-partitions", String(PARTITIONS)],
  ];
  const hostNames = ["server", ...[1, 2, 3, 4, 5, 6].map((host) => `host-${host}`)];
  const used = new Set(hostNames.map((host) => partitionOf(host, PARTITIONS)));
  assert.equal(used.size, PARTITIONS, "the hosts fall in every partition");
  assert.notEqual(partitionOf("host-1", PARTITIONS), partitionOf("server", PARTITIONS));
  const processes = [
    await CollectorProcess.start(`${dir}/unused-1.db`, { args }),
    await CollectorProcess.start(`${dir}/unused-2.db`, { args }),
  ];
  const alive = new Set(processes.map((p) => p.url));
  const store = await ClickHouseStore.open(cluster.clickhouseUrl);
  try {
    await postUntilStored(() => [...alive], serverBatch(1, 10, 2000));
    const batches: TestBatch[] = [];
    for (let seq = 1; seq <= 10; seq++) {
      for (let host = 1; host <= 6; host++) batches.push(hostBatch(host, seq, 100));
    }
    let acknowledged = 0;
    let killed: Promise<string> | undefined;
    const killMidRun = async () => {
      await processes[0].kill();
      alive.delete(processes[0].url);
      const nc = await connect({ servers: cluster.natsUrls });
      try {
        const jsm = await jetstreamManager(nc);
        // host-1's partition: its attribution needs the server's heartbeats, from another.
        const stream = partitionStream("batches", partitionOf("host-1", PARTITIONS), PARTITIONS);
        const leader = (await jsm.streams.info(stream)).cluster?.leader;
        assert.ok(leader, `${stream} has a leader`);
        await cluster.killNats(leader);
        return leader;
      } finally {
        await nc.close();
      }
    };
    // Three agents at once, each retrying a batch until a node acknowledges it.
    const queue = [...batches];
    await Promise.all([0, 1, 2].map(async (agent) => {
      for (let b = queue.shift(); b !== undefined; b = queue.shift()) {
        await postUntilStored(() => [...alive].slice(agent % alive.size), b);
        if (++acknowledged === 20) killed = killMidRun();
      }
    }));
    assert.ok(killed, "the kill happened mid-run");
    const leader = await killed;
    assert.match(leader, /^n[123]$/);
    const expected = batches.length * 100 + 1;
    let stored = 0;
    await waitUntil(
      "every acknowledged flow in ClickHouse",
      async () => (stored = await store.countFlows()) >= expected,
      180_000,
    ).catch((error) => {
      const lines = processes[1].stderrLines.filter((l) => !l.includes("Collector busy"));
      throw new Error(
        `${error.message}: ${stored} of ${expected} flows stored; the node left said:\n${
          lines.slice(-20).join("\n")
        }`,
      );
    });
    for (let host = 1; host <= 6; host++) {
      const flows = await store.flows({ hostname: `host-${host}`, limit: -1 });
      assert.equal(flows.length, 1000, `host-${host}'s flows`);
      assert.equal(new Set(flows.map((f) => f.cookie)).size, 1000, `host-${host}: each once`);
      for (const f of flows) {
        assert.deepEqual([f.attribution, f.remoteWorkloadId], ["attributed", "api"]);
      }
    }
    assert.equal(await store.countFlows(), expected);
    const nc = await connect({ servers: cluster.natsUrls });
    try {
      const jsm = await jetstreamManager(nc);
      for (let p = 0; p < PARTITIONS; p++) {
        const info = await jsm.streams.info(partitionStream("batches", p, PARTITIONS));
        assert.ok(info.state.last_seq > 0, `partition ${p} took batches`);
      }
      await assert.rejects(jsm.streams.info(STREAMS.batches), "no stream of one partition");
    } finally {
      await nc.close();
    }
    for (const p of processes) if (alive.has(p.url)) await p.stop();
    alive.clear();

    await t.step(
      "a node of another partition count refuses to start while work waits",
      async () => {
        const node = (partitions: number, work: { attribution: boolean; sink: boolean }) =>
          startClusterNode({
            natsServers: cluster.natsUrls,
            clickhouseUrl: cluster.clickhouseUrl,
            port: 0,
            streams: { partitions },
            holdSeconds: 20,
            work,
            logger,
          });
        const waiting = hostBatch(1, 11, 5);
        const ingestOnly = await node(PARTITIONS, { attribution: false, sink: false });
        try {
          await postUntilStored(() => [ingestOnly.url], waiting);
        } finally {
          await ingestOnly.close();
        }
        const stream = partitionStream("batches", partitionOf("host-1", PARTITIONS), PARTITIONS);
        const refusal =
          `Stream ${stream} has 1 entries waiting, but nodes with 1 partition (--nats-partitions) do not read it: finish them with nodes of the partition count that made it, then change the count (docs/cluster.md, Upgrades)`;
        await assert.rejects(node(1, { attribution: true, sink: true }), (error) => {
          assert.ok(error instanceof StreamConfigError);
          assert.equal(error.message, refusal);
          return true;
        });
        const stderr: string[] = [];
        const out = { stdout: () => {}, stderr: (line: string) => stderr.push(line) };
        const check = ["check", "--nats", cluster.natsUrls.join(",")];
        assert.equal(await runCollector(check, {}, NO_FILES, out), 1);
        assert.ok(stderr.includes(refusal), stderr.join("\n"));
        // Nodes of the count that made the streams finish the work; then the count may change.
        const drain = await node(PARTITIONS, { attribution: true, sink: true });
        try {
          await waitUntil("the waiting batch stored", async () => {
            const lag = await drain.lag();
            return await store.countFlows() === expected + 5 && lag.attribution === 0 &&
              lag.clickhouse === 0;
          });
        } finally {
          await drain.close();
        }
        const after = await node(1, { attribution: true, sink: true });
        await after.close();
      },
    );
  } finally {
    await store.close();
    for (const p of processes) if (alive.has(p.url)) await p.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
