/**
 * What cluster nodes put on the streams (collector/cluster/messages.ts) and the merged
 * heartbeats they share (Attributor.heartbeats): pure, no servers.
 */
import assert from "node:assert/strict";
import { Attributor } from "../collector/attributor.ts";
import * as entries from "../collector/cluster/messages.ts";
import { batchBody, makeFlow, nsAt } from "./_batches.ts";

Deno.test("a batch's heartbeats merge per key and workload, as observe() learns them", () => {
  const flows = [
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

Deno.test("held, attributed and revocations entries come back as they went", () => {
  const body = { bytes: batchBody("node-a", 7, []), encoding: "gzip" };
  const held = { body, receivedNs: nsAt(3), indexes: [0, 4] };
  assert.deepEqual(entries.decodeHeld(entries.encodeHeld(held)), held);
  const attributed = {
    ...held,
    version: 1 as const,
    verdicts: [
      { status: "attributed" as const, workload: "db", ownerKey: "[10.0.0.9]:5432" },
      { status: "unattributed" as const },
    ],
  };
  assert.deepEqual(entries.decodeAttributed(entries.encodeAttributed(attributed)), attributed);
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
});
