/**
 * Interim records in the collector (issue 14), without a kernel: one row per flow moved on by
 * each later record, per-window deltas, counters that may not go backwards, and ownership kept
 * alive past the retention by the interim heartbeats of a long connection.
 */
import assert from "node:assert/strict";
import { batchCbor, interimOf, makeFlow, nsAt } from "./_batches.ts";
import { ImplausibleBatchError, Ingestor } from "../collector/ingest.ts";
import { runQuery } from "../collector/query.ts";
import { FlowStore } from "../collector/store.ts";
import type { FlowRecord } from "../lib/flow.ts";

const S = 1_000_000_000n;

async function withStore(
  body: (store: FlowStore, db: string) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "collector_interim_test_" });
  try {
    using store = FlowStore.open(`${dir}/flows.db`);
    await body(store, `${dir}/flows.db`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A clock the test moves, and an ingestor on it. */
function clocked(
  store: FlowStore,
  options: { retentionS?: number; clock?: { nowNs: bigint } } = {},
) {
  const clock = options.clock ?? { nowNs: nsAt(0) };
  const ingestor = Ingestor.open(store, {
    holdNs: 5n * S,
    retentionNs: BigInt(options.retentionS ?? 3600) * S,
    now: () => clock.nowNs,
  });
  return { clock, ingestor };
}

async function query(args: string[]): Promise<string[]> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runQuery(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  assert.equal(code, 0, err.join("\n"));
  return out;
}

const conn = (): FlowRecord => ({
  ...makeFlow({
    local: "10.0.0.1:40000",
    remote: "10.0.0.2:5432",
    workload: "api",
    startS: 10,
    endS: 150,
  }),
  bytesSent: 350,
  bytesAcked: 350,
  bytesReceived: 1600,
});

Deno.test("an open flow is one row that each later record moves on, and its windows add up", async () => {
  await withStore(async (store, db) => {
    const { clock, ingestor } = clocked(store);
    const flow = conn();
    const first = interimOf(flow, 60, { bytesSent: 100, bytesAcked: 100, bytesReceived: 1000 });
    clock.nowNs = nsAt(60);
    const r1 = ingestor.ingestBody(batchCbor("node-a", 1, [first]));
    assert.equal(r1.updatedFlows, 0);
    assert.equal(r1.repeatedFlows, 0);
    let [stored] = store.flows();
    assert.equal(stored.recordKind, "interim");
    assert.equal(stored.end, "open");
    assert.equal(store.flows({ recordKind: "interim" }).length, 1);
    assert.equal(store.flows({ recordKind: "final" }).length, 0);

    clock.nowNs = nsAt(120);
    const second = interimOf(flow, 120, { bytesSent: 300, bytesAcked: 300, bytesReceived: 1500 });
    const r2 = ingestor.ingestBody(batchCbor("node-a", 2, [second]));
    assert.deepEqual([r2.updatedFlows, r2.repeatedFlows], [1, 0]);
    clock.nowNs = nsAt(150);
    const r3 = ingestor.ingestBody(batchCbor("node-a", 3, [flow, makeShort()]));
    assert.deepEqual([r3.updatedFlows, r3.repeatedFlows], [1, 0]);

    const flows = store.flows();
    assert.equal(flows.length, 2, "one row per flow");
    [stored] = flows;
    assert.equal(stored.recordKind, "final");
    assert.equal(stored.end, "normal");
    assert.equal(stored.tStartNs, flow.tStartNs);
    assert.equal(stored.tEndNs, flow.tEndNs);
    assert.deepEqual([stored.bytesSent, stored.bytesReceived], [350, 1600]);

    const windows = store.windowDeltas().filter((d) => d.flow.id === stored.id);
    assert.deepEqual(
      windows.map((d) => [d.tNs, d.recordKind, d.bytesSent, d.bytesReceived]),
      [
        [nsAt(60), "interim", 100, 1000],
        [nsAt(120), "interim", 200, 500],
        [nsAt(150), "final", 50, 100],
      ],
    );
    const short = store.windowDeltas().filter((d) => d.flow.id !== stored.id);
    assert.deepEqual(short.map((d) => [d.recordKind, d.bytesSent]), [["final", 1200]]);

    // A retry and a late, older interim record change nothing.
    assert.equal(ingestor.ingestBody(batchCbor("node-a", 2, [second])).duplicate, true);
    const late = interimOf(flow, 90, { bytesSent: 200, bytesAcked: 200, bytesReceived: 1200 });
    const r4 = ingestor.ingestBody(batchCbor("node-a", 4, [late]));
    assert.deepEqual([r4.updatedFlows, r4.repeatedFlows], [0, 1]);
    assert.deepEqual(store.flows()[0], stored);
    assert.equal(store.windowDeltas().length, 4);

    // The query command: one row per flow with its state, and the windows.
    const rows = (await query(["--db", db, "--format", "json"])).map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => [r.state, r.record_kind, r.bytes_sent]), [
      ["closed", "final", 350],
      ["closed", "final", 1200],
    ]);
    const open = await query(["--db", db, "--state", "open", "--format", "json"]);
    assert.deepEqual(open, []);
    const perWindow = (await query(["--db", db, "--per-window", "--format", "json"]))
      .map((l) => JSON.parse(l));
    assert.deepEqual(perWindow.map((r) => r.bytes_sent), [100, 200, 1200, 50], "by time");
    assert.equal(perWindow.reduce((n, r) => n + r.bytes_received, 0), 1600 + 5400);
    const table = await query(["--db", db, "--per-window", "--from", String(nsAt(100))]);
    assert.equal(table.length, 1 + 3, "a header and the windows from 100 s");
    assert.match(table[0], /^TIME \(UTC\)\s+HOST\s+LOCAL/);
  });
});

function makeShort(): FlowRecord {
  return makeFlow({
    local: "10.0.0.1:40001",
    remote: "10.0.0.2:5432",
    workload: "api",
    startS: 140,
    endS: 141,
  });
}

Deno.test("an interim record whose counters go backwards is refused, and nothing is learned", async () => {
  await withStore((store) => {
    const { clock, ingestor } = clocked(store);
    const flow = conn();
    clock.nowNs = nsAt(60);
    ingestor.ingestBody(
      batchCbor("node-a", 1, [interimOf(flow, 60, { bytesSent: 100, bytesReceived: 1000 })]),
    );
    const ranges = ingestor.attributor.ownership.size;
    const before = store.counts();
    // Later, but fewer bytes received than stored.
    const fewer = interimOf(flow, 120, { bytesSent: 150, bytesReceived: 999 });
    assert.throws(() => ingestor.ingestBody(batchCbor("node-a", 2, [fewer])), {
      name: "ImplausibleBatchError",
      message: new RegExp(
        "^Flow 0: bytes_received 999 is below the 1000 that an earlier record of flow " +
          "0c9e4f6a-8b1d-4e2f-a3c5-7d9e1f2a4b6c:\\d+ reported at t_end_ns " + nsAt(60) +
          " \\(the counters of one flow never go backwards\\)$",
      ),
    });
    // Earlier than the stored record, but more bytes sent.
    const more = interimOf(flow, 30, { bytesSent: 101, bytesReceived: 900 });
    assert.throws(
      () => ingestor.ingestBody(batchCbor("node-a", 3, [more])),
      /^ImplausibleBatchError: Flow 0: bytes_sent 101 is above the 100 that a later record/,
    );
    // Within one batch: the second record of the flow goes back on the first.
    const other = makeFlow({
      local: "10.0.0.1:40002",
      remote: "10.0.0.2:5432",
      workload: "api",
      startS: 20,
      endS: 200,
    });
    const pair = [
      interimOf(other, 60, { bytesSent: 10 }),
      interimOf(other, 61, { bytesSent: 9 }),
    ];
    assert.throws(
      () => ingestor.ingestBody(batchCbor("node-a", 4, pair)),
      (error: unknown) =>
        error instanceof ImplausibleBatchError && error.message.startsWith("Flow 1: bytes_sent 9"),
    );
    assert.deepEqual(store.counts(), before, "no batch of these was stored");
    assert.equal(ingestor.attributor.ownership.size, ranges, "and no heartbeat learned");
    // Counters that only rise are taken.
    const rising = interimOf(flow, 120, { bytesSent: 150, bytesReceived: 1000 });
    assert.equal(ingestor.ingestBody(batchCbor("node-a", 5, [rising])).updatedFlows, 1);
  });
});

/**
 * A database connection from "api" (node-a, 10.0.0.1) to "db" (node-b, 10.0.0.2:5432), open
 * from 0 s to 600 s, against a collector that keeps ownership for 120 s.
 */
function longConnection() {
  const client = makeFlow({
    local: "10.0.0.1:40000",
    remote: "10.0.0.2:5432",
    workload: "api",
    startS: 0,
    endS: 600,
  });
  const server = makeFlow({
    local: "10.0.0.2:5432",
    remote: "10.0.0.1:40000",
    workload: "db",
    startS: 0,
    endS: 600,
    direction: "inbound",
  });
  return { client, server };
}

Deno.test("a connection longer than the retention is attributed through interim heartbeats on both ends", async (t) => {
  await t.step("with interim records every minute: attributed both ways", async () => {
    await withStore((store) => {
      const { clock, ingestor } = clocked(store, { retentionS: 120 });
      const { client, server } = longConnection();
      let sequence = 0;
      for (let s = 60; s < 600; s += 60) {
        clock.nowNs = nsAt(s);
        sequence++;
        ingestor.ingestBody(batchCbor("node-a", sequence, [interimOf(client, s)]));
        ingestor.ingestBody(batchCbor("node-b", sequence, [interimOf(server, s)]));
        ingestor.tick();
      }
      clock.nowNs = nsAt(600);
      ingestor.tick();
      assert.ok(ingestor.attributor.ownership.horizonNs > client.tStartNs, "past the retention");
      ingestor.ingestBody(batchCbor("node-a", ++sequence, [client]));
      ingestor.ingestBody(batchCbor("node-b", sequence, [server]));
      const flows = store.flows();
      assert.deepEqual(
        flows.map((f) => [f.hostname, f.recordKind, f.attribution, f.remoteWorkloadId]),
        [
          ["node-a", "final", "attributed", "db"],
          ["node-b", "final", "attributed", "api"],
        ],
      );
    });
  });
  await t.step(
    "across a collector restart too: the keys answer as far back as before",
    async () => {
      await withStore((first, db) => {
        const { client, server } = longConnection();
        const clock = { nowNs: nsAt(0) };
        let sequence = 0;
        const minutes = (ingestor: Ingestor, from: number, to: number) => {
          for (let s = from; s < to; s += 60) {
            clock.nowNs = nsAt(s);
            sequence++;
            ingestor.ingestBody(batchCbor("node-a", sequence, [interimOf(client, s)]));
            ingestor.ingestBody(batchCbor("node-b", sequence, [interimOf(server, s)]));
            ingestor.tick();
          }
        };
        minutes(clocked(first, { retentionS: 120, clock }).ingestor, 60, 300);
        first.close();
        using store = FlowStore.open(db);
        const { ingestor } = clocked(store, { retentionS: 120, clock });
        minutes(ingestor, 300, 600);
        clock.nowNs = nsAt(600);
        ingestor.ingestBody(batchCbor("node-a", ++sequence, [client]));
        ingestor.ingestBody(batchCbor("node-b", sequence, [server]));
        assert.deepEqual(store.flows().map((f) => [f.attribution, f.remoteWorkloadId]), [
          ["attributed", "db"],
          ["attributed", "api"],
        ]);
        // A third host's connection to the database, from 100 s, first reported after the
        // restart: attributed through the range kept alive, as it would have been before.
        const batch = makeFlow({
          local: "10.0.0.3:40001",
          remote: "10.0.0.2:5432",
          workload: "batch",
          startS: 100,
          endS: 600,
        });
        ingestor.ingestBody(batchCbor("node-c", 1, [interimOf(batch, 590)]));
        const third = store.flows({ hostname: "node-c" });
        assert.deepEqual(third.map((f) => [f.attribution, f.remoteWorkloadId]), [
          ["attributed", "db"],
        ]);
        // Its own address, first learned now, answers nothing before the horizon.
        const ownership = ingestor.attributor.ownership;
        assert.equal(ownership.reach("10.0.0.3"), ownership.horizonNs - 1n);
        assert.deepEqual(ownership.lookup("10.0.0.3", nsAt(200)), { kind: "none" });
        assert.deepEqual(ownership.lookup("10.0.0.3", nsAt(590)), {
          kind: "owned",
          workload: "batch",
        });
      });
    },
  );
  await t.step("without them, the same flows are unattributed", async () => {
    await withStore((store) => {
      const { clock, ingestor } = clocked(store, { retentionS: 120 });
      const { client, server } = longConnection();
      clock.nowNs = nsAt(600);
      ingestor.tick();
      ingestor.ingestBody(batchCbor("node-a", 1, [client]));
      ingestor.ingestBody(batchCbor("node-b", 1, [server]));
      clock.nowNs = nsAt(606);
      ingestor.tick(); // past the hold: nothing can settle them
      assert.deepEqual(store.flows().map((f) => [f.attribution, f.remoteWorkloadId]), [
        ["unattributed", null],
        ["unattributed", null],
      ]);
    });
  });
});

Deno.test("how far a key's pruned ranges reached survives a collector restart", async () => {
  await withStore((first, db) => {
    const clock = { nowNs: nsAt(0) };
    const flow = (workload: string, startS: number, endS: number) =>
      makeFlow({ local: "10.0.0.9:5000", remote: "10.0.0.1:40000", workload, startS, endS });
    {
      const { ingestor } = clocked(first, { retentionS: 120, clock });
      clock.nowNs = nsAt(100);
      ingestor.ingestBody(batchCbor("node-x", 1, [flow("a", 0, 100)]));
      clock.nowNs = nsAt(620);
      ingestor.ingestBody(batchCbor("node-y", 1, [flow("b", 50, 620)]));
      ingestor.tick(); // horizon 500 s: a's range goes; "b" answers from just past its end
      const ownership = ingestor.attributor.ownership;
      assert.deepEqual(ownership.lookup("10.0.0.9", nsAt(60)), { kind: "none" });
      assert.deepEqual(ownership.lookup("10.0.0.9", nsAt(300)), { kind: "owned", workload: "b" });
      first.close();
    }
    using store = FlowStore.open(db);
    const { ingestor } = clocked(store, { retentionS: 120, clock });
    const ownership = ingestor.attributor.ownership;
    assert.deepEqual(ownership.lookup("10.0.0.9", nsAt(60)), { kind: "none" }, "a contested it");
    assert.deepEqual(ownership.lookup("10.0.0.9", nsAt(300)), { kind: "owned", workload: "b" });
  });
});
