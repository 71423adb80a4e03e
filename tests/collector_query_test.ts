import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { batchCbor, makeFlow, nsAt } from "./_batches.ts";
import { Ingestor } from "../collector/ingest.ts";
import { runQuery } from "../collector/query.ts";
import { FlowStore, STORE_VERSION } from "../collector/store.ts";
import { formatFlowId } from "../lib/flow_id.ts";

/** Runs the query command, capturing its output. */
async function query(args: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runQuery(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out, err };
}

/**
 * A database where address 10.0.0.9 belonged to "workload-a" until 100 s and to
 * "workload-b" from 130 s, and node-a called it at 50 s, 150 s and 115 s (in between).
 */
async function withReusedAddress(body: (db: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "collector_query_test_" });
  const db = `${dir}/flows.db`;
  try {
    using store = FlowStore.open(db);
    let nowNs = nsAt(200);
    const ingestor = Ingestor.open(store, {
      mergeGapNs: 10_000_000_000n,
      holdNs: 1_000_000_000n,
      now: () => nowNs,
    });
    ingestor.ingestBody(batchCbor("node-x", 1, [
      makeFlow({
        local: "10.0.0.9:80",
        remote: "10.0.0.7:1",
        workload: "workload-a",
        startS: 0,
        endS: 100,
        direction: "inbound",
      }),
    ]));
    ingestor.ingestBody(batchCbor("node-y", 1, [
      makeFlow({
        local: "10.0.0.9:80",
        remote: "10.0.0.7:2",
        workload: "workload-b",
        startS: 130,
        endS: 190,
        direction: "inbound",
      }),
    ]));
    ingestor.ingestBody(batchCbor("node-a", 1, [
      makeFlow({
        local: "10.0.0.1:40001",
        remote: "10.0.0.9:80",
        workload: "client",
        startS: 50,
        endS: 51,
      }),
      makeFlow({
        local: "10.0.0.1:40002",
        remote: "10.0.0.9:80",
        workload: "client",
        startS: 150,
        endS: 151,
      }),
      makeFlow({
        local: "10.0.0.1:40003",
        remote: "10.0.0.9:80",
        workload: "client",
        startS: 115,
        endS: 116,
      }),
    ]));
    nowNs += 1_000_000_000n;
    ingestor.tick(); // the flow at 115 s waited its (1 s) hold delay: unattributed
    await body(db); // the writer is still open, as a running collector's would be
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("query attributes a reused address to its owner at the flow's start", async () => {
  await withReusedAddress(async (db) => {
    const { code, out } = await query(["--db", db, "--host", "node-a", "--format", "json"]);
    assert.equal(code, 0);
    const rows = out.map((line) => JSON.parse(line));
    assert.deepEqual(rows.map((r) => [r.local_port, r.remote_workload_id, r.attribution]), [
      [40001, "workload-a", "attributed"], // before the hand-over
      [40003, null, "unattributed"], // in no known range: never guessed
      [40002, "workload-b", "attributed"], // after the hand-over
    ]);
    assert.equal(rows[0].host, "node-a");
    assert.equal(rows[0].remote_ip, "10.0.0.9");
    assert.match(rows[0].flow_id, /^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}:\d+$/);
    assert.equal(new Set(rows.map((r) => r.flow_id)).size, 3, "one flow ID per flow");
    assert.equal(rows[0].bytes_retrans, 0);
    assert.match(out[0], /"t_start_ns":\d{19},/, "ns times are exact integers");
  });
});

Deno.test("query prints an aligned table by default", async () => {
  await withReusedAddress(async (db) => {
    const { code, out } = await query(["--db", db, "--workload", "workload-b"]);
    assert.equal(code, 0);
    assert.match(
      out[0],
      /^START \(UTC\)\s+DURATION\s+HOST\s+LOCAL\s+LOCAL WORKLOAD\s+DIR\s+REMOTE\s+REMOTE WORKLOAD/,
    );
    assert.match(out[0], /\s+SENT\s+RETRANS\s+RECEIVED\s+RTT\s+FLOW ID$/);
    assert.match(out[1], /\s1200\s+0\s+5400\s+0\.25ms\s+[0-9a-f-]{36}:\d+$/);
    assert.equal(out.length, 3, "header, workload-b's own flow, the flow attributed to it");
    assert.match(
      out[1],
      /node-y\s+10\.0\.0\.9:80\s+workload-b\s+<-\s+10\.0\.0\.7:2\s+\(unattributed\)/,
    );
    assert.match(
      out[2],
      /node-a\s+10\.0\.0\.1:40002\s+client\s+->\s+10\.0\.0\.9:80\s+workload-b\s+normal/,
    );
  });
});

Deno.test("query filters by time range, address, status and limit", async () => {
  await withReusedAddress(async (db) => {
    const ports = async (...args: string[]) => {
      const { code, out } = await query(["--db", db, "--format", "json", ...args]);
      assert.equal(code, 0);
      return out.map((line) => JSON.parse(line).local_port);
    };
    assert.deepEqual(await ports("--from", String(nsAt(100)), "--to", String(nsAt(140))), [
      40003,
      80, // workload-b's own flow, from 130 s
    ]);
    const iso = new Date(Number(nsAt(140) / 1_000_000n)).toISOString();
    assert.deepEqual(await ports("--from", iso, "--ip", "10.0.0.1"), [40002]);
    assert.deepEqual(await ports("--ip", "10.0.0.7"), [80, 80]);
    assert.deepEqual(await ports("--status", "attributed"), [40001, 40002]);
    assert.deepEqual(await ports("--limit", "1"), [80]);
    assert.deepEqual(await ports("--from", "1d"), [], "the flows are older than a day");
  });
});

Deno.test("query explains bad arguments and a missing database", async (t) => {
  await t.step("--help prints usage", async () => {
    const { code, out } = await query(["--help"]);
    assert.equal(code, 0);
    assert.match(out[0], /^Usage: flowexporter query/);
  });
  await t.step("an unknown flag exits 2", async () => {
    const { code, err } = await query(["--colour"]);
    assert.equal(code, 2);
    assert.match(err[0], /--colour.*see flowexporter query --help/);
  });
  await t.step("a bad time exits 2", async () => {
    const { code, err } = await query(["--from", "last tuesday"]);
    assert.equal(code, 2);
    assert.match(err[0], /^Invalid from time "last tuesday": use RFC 3339/);
  });
  await t.step("a bad address exits 2", async () => {
    const { code, err } = await query(["--ip", "10.0.0.300"]);
    assert.equal(code, 2);
    assert.match(err[0], /^Invalid IP address "10\.0\.0\.300"/);
  });
  await t.step("a missing database exits 1 and is not created", async () => {
    const dir = await Deno.makeTempDir();
    try {
      const { code, err } = await query(["--db", `${dir}/none.db`]);
      assert.equal(code, 1);
      assert.match(err[0], /^Cannot open database .*none\.db: .* \(check --db\)$/);
      await assert.rejects(Deno.stat(`${dir}/none.db`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("a database of layout version 1 is upgraded by the collector, then read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_query_test_" });
  const db = `${dir}/flows.db`;
  const flow = (port: number) =>
    makeFlow({
      local: `10.0.0.1:${port}`,
      remote: "10.0.0.9:80",
      workload: "a",
      startS: port,
      endS: 1 + port,
    });
  try {
    {
      using store = FlowStore.open(db);
      Ingestor.open(store).ingestBody(batchCbor("node-a", 1, [flow(1)]));
    }
    // What the collector before flow IDs left: no flow_id, bytes_retrans or record_kind column,
    // no batch digest, no samples, layout 1.
    {
      using raw = new DatabaseSync(db);
      raw.exec(
        "DROP VIEW flows_attributed; DROP VIEW flows_settled; DROP INDEX flows_by_flow_id; " +
          "DROP VIEW flow_window_deltas; DROP TABLE flow_samples; " +
          "ALTER TABLE flows DROP COLUMN record_kind; " +
          "ALTER TABLE flows DROP COLUMN flow_id; ALTER TABLE flows DROP COLUMN bytes_retrans; " +
          "ALTER TABLE batches DROP COLUMN digest; " +
          "CREATE VIEW flows_settled AS SELECT * FROM flows; " + // stand-ins for its views
          "CREATE VIEW flows_attributed AS SELECT * FROM flows_settled; PRAGMA user_version = 1",
      );
    }
    const before = await query(["--db", db]);
    assert.equal(before.code, 1);
    assert.match(
      before.err[0],
      new RegExp(
        `layout version 1, this collector uses ${STORE_VERSION} \\(start the collector on it once to upgrade it\\)$`,
      ),
    );
    const repeated = flow(2);
    {
      using store = FlowStore.open(db);
      const ingestor = Ingestor.open(store);
      ingestor.ingestBody(batchCbor("node-a", 2, [repeated]));
      assert.equal(ingestor.ingestBody(batchCbor("node-a", 3, [repeated])).repeatedFlows, 1);
    }
    const { code, out } = await query(["--db", db, "--format", "json"]);
    assert.equal(code, 0);
    assert.deepEqual(out.map((line) => JSON.parse(line)).map((r) => [r.local_port, r.flow_id]), [
      [1, null], // stored before the upgrade: its flow ID is unknown
      [2, formatFlowId(repeated.bootId, repeated.cookie)],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
