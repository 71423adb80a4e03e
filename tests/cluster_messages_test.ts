/**
 * What cluster nodes put on the streams (collector/cluster/messages.ts) and the merged
 * heartbeats they share (Attributor.heartbeats): pure, no servers.
 */
import assert from "node:assert/strict";
import { Attributor } from "../collector/attributor.ts";
import * as entries from "../collector/cluster/messages.ts";
import {
  BATCH_COLUMNS,
  CLICKHOUSE_SCHEMA_URL,
  FLOW_ROW_COLUMNS,
  VERDICT_COLUMNS,
} from "../collector/cluster/clickhouse_store.ts";
import { RowBinaryWriter } from "../collector/cluster/row_binary.ts";
import { makeFlow, nsAt } from "./_batches.ts";

/** Flows of node-a: outbound and inbound, by ip-map and port-map workloads. */
const FLOWS = [
  makeFlow({
    local: "10.0.0.7:40000",
    remote: "10.0.0.9:443",
    workload: "web",
    startS: 0,
    endS: 10,
  }),
  makeFlow({
    local: "10.0.0.7:40001",
    remote: "10.0.0.9:443",
    workload: "web",
    startS: 20,
    endS: 30,
  }),
  makeFlow({
    local: "10.0.0.7:8080",
    remote: "10.0.0.5:50000",
    workload: "web",
    startS: 5,
    endS: 6,
    direction: "inbound",
  }),
  makeFlow({
    local: "10.0.0.8:9000",
    remote: "10.0.0.5:50001",
    workload: "db",
    startS: 1,
    endS: 2,
    identitySource: "port-map",
  }),
  makeFlow({ local: "10.0.0.9:40002", remote: "10.0.0.5:443", workload: "", startS: 1, endS: 2 }),
];

Deno.test("a batch's heartbeats merge per key and workload, as observe() learns them", () => {
  const flows = FLOWS;
  const attributor = new Attributor({ mergeGapNs: 30_000_000_000n });
  const heartbeats = attributor.heartbeats("node-a", flows);
  assert.deepEqual(heartbeats.ranges, [
    { key: "10.0.0.7", workload: "web", startNs: nsAt(0), endNs: nsAt(30) },
    { key: "[10.0.0.7]:8080", workload: "web", startNs: nsAt(5), endNs: nsAt(6) },
    { key: "[10.0.0.8]:9000", workload: "db", startNs: nsAt(1), endNs: nsAt(2) },
  ]);
  assert.deepEqual(heartbeats.shared, new Map([["10.0.0.8", nsAt(2)]]));
  // Learning them gives the map observe() would have built from the flows.
  const observed = new Attributor({ mergeGapNs: 30_000_000_000n });
  observed.observe("node-a", flows);
  const learned = new Attributor({ mergeGapNs: 30_000_000_000n });
  learned.learn(entries.decodeHeartbeats(entries.encodeHeartbeats(heartbeats)));
  for (const key of ["10.0.0.7", "[10.0.0.7]:8080", "[10.0.0.8]:9000", "10.0.0.9"]) {
    assert.deepEqual(learned.ownership.ranges(key), observed.ownership.ranges(key), key);
  }
  assert.deepEqual(learned.shared(), observed.shared());
});

Deno.test("batch, held, attributed and revocations entries come back as they went", () => {
  const flows = FLOWS.slice(1, 3);
  const batch: entries.BatchEntry = {
    hostname: "node-a",
    sequence: 7,
    receivedNs: nsAt(9),
    batchRow: Uint8Array.of(1, 2, 3),
    flowRows: Uint8Array.of(4, 5),
    rowOffsets: Uint32Array.of(0, 70_000, 140_001),
    remoteKeys: flows.map((f) => new Attributor().endpoint("node-a", f).ipKey),
    endpoints: entries.packEndpoints(flows),
  };
  const plain = (entry: entries.BatchEntry) => ({
    ...entry,
    batchRow: [...entry.batchRow],
    flowRows: [...entry.flowRows],
    endpoints: [...entry.endpoints],
  });
  assert.deepEqual(plain(entries.decodeBatchEntry(entries.encodeBatchEntry(batch))), plain(batch));
  // The remote ends attribution looks up are those of the flows themselves.
  const attributor = new Attributor();
  const decoded = entries.decodeBatchEntry(entries.encodeBatchEntry(batch));
  flows.forEach((f, i) =>
    assert.deepEqual(entries.endpointOf(decoded, i), attributor.endpoint("node-a", f))
  );
  const held = { batch, indexes: [0, 1] };
  const heldBack = entries.decodeHeld(entries.encodeHeld(held));
  assert.deepEqual({ ...heldBack, batch: plain(heldBack.batch) }, { ...held, batch: plain(batch) });
  const attributed = {
    ...held,
    version: 1 as const,
    verdicts: [
      { status: "attributed" as const, workload: "db", ownerKey: "[10.0.0.9]:5432" },
      { status: "unattributed" as const },
    ],
  };
  const back = entries.decodeAttributed(entries.encodeAttributed(attributed));
  // It carries the rows only: the remote ends were for attribution.
  const { remoteKeys: _keys, endpoints: _endpoints, ...rows } = plain(batch);
  assert.deepEqual({
    ...back,
    batch: {
      ...back.batch,
      batchRow: [...back.batch.batchRow],
      flowRows: [...back.batch.flowRows],
    },
  }, { ...attributed, batch: rows });
  const revocations = {
    revocations: [{
      key: "10.0.0.9",
      byAddress: true,
      fromNs: nsAt(1),
      toNs: nsAt(2),
      serverEndsOnly: false,
      status: "ambiguous" as const,
    }],
  };
  assert.deepEqual(entries.decodeRevocations(entries.encodeRevocations(revocations)), revocations);
});

Deno.test("an entry of another version is refused with what to do", () => {
  const newer = new TextEncoder().encode(JSON.stringify({ v: 2, r: [], s: [] }));
  assert.throws(() => entries.decodeHeartbeats(newer), {
    name: entries.EntryError.name,
    message: "Cannot read an ownership entry of version 2: this node reads version 1 (upgrade it)",
  });
  assert.throws(() => entries.decodeHeld(new Uint8Array([0xff])), entries.EntryError);
  const older = entries.encodeHeld({
    batch: {
      hostname: "node-a",
      sequence: 1,
      receivedNs: 0n,
      batchRow: new Uint8Array(),
      flowRows: new Uint8Array(),
      rowOffsets: Uint32Array.of(0),
      remoteKeys: [],
      endpoints: new Uint8Array(),
    },
    indexes: [],
  });
  older[1 + older.indexOf(0x76)] = 1; // "v": 2 → 1
  assert.throws(() => entries.decodeHeld(older), {
    name: entries.EntryError.name,
    message: "Cannot read a held entry of version 1: this node reads version 2 (upgrade it)",
  });
});

Deno.test("RowBinaryWriter writes strings with their LEB128 length, short and long", () => {
  const w = new RowBinaryWriter(4);
  w.string("é");
  w.string("x".repeat(200));
  w.nullableString(null);
  w.uint64(2 ** 40 + 5);
  const bytes = w.bytes();
  assert.deepEqual([...bytes.subarray(0, 3)], [2, 0xc3, 0xa9]);
  assert.deepEqual([...bytes.subarray(3, 5)], [0xc8, 0x01], "200 as LEB128");
  assert.equal(new TextDecoder().decode(bytes.subarray(5, 205)), "x".repeat(200));
  assert.equal(bytes[205], 1, "null");
  const view = new DataView(bytes.buffer, bytes.byteOffset + 206, 8);
  assert.equal(view.getBigUint64(0, true), 2n ** 40n + 5n);
  assert.equal(bytes.length, 214);
});

Deno.test("the rows the sink writes name every column of schema/clickhouse.sql's tables", async () => {
  const sql = await Deno.readTextFile(CLICKHOUSE_SCHEMA_URL);
  const columns = (table: string) => {
    const body = sql.split(`CREATE TABLE IF NOT EXISTS ${table} (`)[1].split(") ENGINE")[0];
    return body.split(",").map((line) => line.trim().split(" ")[0]).sort();
  };
  assert.deepEqual([...FLOW_ROW_COLUMNS, ...VERDICT_COLUMNS].sort(), columns("flows"));
  assert.deepEqual([...BATCH_COLUMNS].sort(), columns("batches"));
});
