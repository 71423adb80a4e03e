/**
 * A small cluster for the dependency-map tests, as the batches its hosts send, with the map a
 * collector must draw from them (client → server):
 *
 * - `frontend` (node-f, 10.1.0.5) calls `checkout` (node-a, 10.1.0.1:8080) three times: one
 *   normal, one refused (no bytes, no RTT), one reset; checkout reports the same connections as
 *   inbound, which must not count twice;
 * - `checkout` calls 10.1.0.9:80, which `payments-v1` (node-x) owned until 100 s and
 *   `payments-v2` (node-y) from 130 s (an IP hand-over): at 50 s, 150 s, and at 115 s when no
 *   one did (unattributed, in 10.0.0.0/8);
 * - `checkout` calls 10.1.0.2:5432 (`db`, node-b) at 10 s, while `intruder` (node-c) claims
 *   10.1.0.2 too (ambiguous), and at 20 s, when only db does;
 * - `checkout` calls 192.0.2.10:443 (external), and, in a later batch, 10.1.0.77:9000 (pending:
 *   its owner's heartbeat may still come);
 * - a host without identities (node-z) calls db; hosts without agents (10.1.0.7, 10.1.0.50)
 *   call payments and db;
 * - `node-s` adds synthetic flows (tests/_synthetic_flows.ts) at 300 s, to unattributed
 *   172.16.0.0/12 and external IPv6 peers.
 *
 * Post {@linkcode SCENARIO_BATCHES}, let held flows expire (hold delay), then post
 * {@linkcode SCENARIO_LATE_BATCH}.
 *
 * @module
 */

import type { FlowRecord } from "../lib/flow.ts";
import assert from "node:assert/strict";
import type { EdgeStats, GraphSource } from "../collector/graph.ts";
import { Ingestor } from "../collector/ingest.ts";
import { FlowStore } from "../collector/store.ts";
import { batchCbor, makeFlow, nsAt } from "./_batches.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";

/** One batch: who sends it and its flows. */
export interface ScenarioBatch {
  hostname: string;
  sequence: number;
  flows: FlowRecord[];
}

const inbound = (local: string, remote: string, workload: string, startS: number, endS: number) =>
  makeFlow({ local, remote, workload, startS, endS, direction: "inbound" });
const outbound = (local: string, remote: string, workload: string, startS: number) =>
  makeFlow({ local, remote, workload, startS, endS: startS + 1 });

/** Number of synthetic flows node-s sends. */
export const SYNTHETIC_FLOWS = 40;

/** The batches of the scenario, in the order to post them. */
export function scenarioBatches(): ScenarioBatch[] {
  return [
    {
      hostname: "node-x",
      sequence: 1,
      flows: [inbound("10.1.0.9:80", "10.1.0.7:1", "payments-v1", 0, 100)],
    },
    {
      hostname: "node-y",
      sequence: 1,
      flows: [inbound("10.1.0.9:80", "10.1.0.7:2", "payments-v2", 130, 190)],
    },
    {
      hostname: "node-b",
      sequence: 1,
      flows: [
        inbound("10.1.0.2:5432", "10.1.0.50:3000", "db", 0, 60),
        inbound("10.1.0.2:5432", "10.1.0.1:40002", "db", 20, 21), // checkout's call, seen by db
      ],
    },
    {
      hostname: "node-c",
      sequence: 1,
      flows: [
        makeFlow({
          local: "10.1.0.2:7000",
          remote: "10.1.0.99:1",
          workload: "intruder",
          startS: 5,
          endS: 15,
        }),
      ],
    },
    {
      hostname: "node-a",
      sequence: 1,
      flows: [
        outbound("10.1.0.1:40001", "10.1.0.2:5432", "checkout", 10),
        outbound("10.1.0.1:40002", "10.1.0.2:5432", "checkout", 20),
        outbound("10.1.0.1:40003", "10.1.0.9:80", "checkout", 50),
        outbound("10.1.0.1:40004", "192.0.2.10:443", "checkout", 60),
        inbound("10.1.0.1:8080", "10.1.0.5:50001", "checkout", 70, 71),
        inbound("10.1.0.1:8080", "10.1.0.5:50002", "checkout", 80, 81),
        inbound("10.1.0.1:8080", "10.1.0.5:50003", "checkout", 90, 91),
        outbound("10.1.0.1:40005", "10.1.0.9:80", "checkout", 115),
        outbound("10.1.0.1:40006", "10.1.0.9:80", "checkout", 150),
      ],
    },
    {
      hostname: "node-f",
      sequence: 1,
      flows: [
        { ...outbound("10.1.0.5:50001", "10.1.0.1:8080", "frontend", 70), srttUs: 100 },
        {
          ...outbound("10.1.0.5:50002", "10.1.0.1:8080", "frontend", 80),
          end: "refused",
          closeState: "SYN_SENT",
          error: 111,
          bytesSent: 0,
          bytesAcked: 0,
          bytesReceived: 0,
          srttUs: 0,
        },
        {
          ...outbound("10.1.0.5:50003", "10.1.0.1:8080", "frontend", 90),
          end: "reset",
          srttUs: 300,
        },
      ],
    },
    {
      hostname: "node-z",
      sequence: 1,
      flows: [{
        ...outbound("10.1.0.30:41000", "10.1.0.2:5432", "", 22),
        identitySource: "unknown",
      }],
    },
    {
      hostname: "node-s",
      sequence: 1,
      flows: Array.from({ length: SYNTHETIC_FLOWS }, (_, i) => syntheticFlow(i, nsAt(300))),
    },
  ];
}

/**
 * Late evidence, posted last where a test asks for it: `impostor` (node-i) served on checkout's
 * 10.1.0.1:8080 from 75 s to 95 s, so frontend's calls at 80 s and 90 s, attributed to
 * checkout, are revoked as ambiguous; the one at 70 s stays.
 */
export const SCENARIO_IMPOSTOR_BATCH: ScenarioBatch = {
  hostname: "node-i",
  sequence: 1,
  flows: [inbound("10.1.0.1:8080", "10.1.0.6:1", "impostor", 75, 95)],
};

/** The batch to post after the held flows expired: a call whose owner is not known yet. */
export const SCENARIO_LATE_BATCH: ScenarioBatch = {
  hostname: "node-a",
  sequence: 2,
  flows: [outbound("10.1.0.1:40007", "10.1.0.77:9000", "checkout", 390)],
};

/** The time range that holds the whole scenario, ns since the epoch. */
export const SCENARIO_RANGE = { fromNs: nsAt(0), toNs: nsAt(400) };

/** An expected edge: client, server, and its numbers. */
export interface ExpectedEdge {
  source: string;
  target: string;
  flows: number;
  bytesToTarget: number;
  bytesToSource: number;
  failed: number;
  resets: number;
  rttP50Us: number | null;
  rttP99Us: number | null;
}

/** One flow of `makeFlow` each: 1200 bytes acknowledged one way, 5400 received the other. */
const one = (source: string, target: string): ExpectedEdge => ({
  source,
  target,
  flows: 1,
  bytesToTarget: 1200,
  bytesToSource: 5400,
  failed: 0,
  resets: 0,
  rttP50Us: 250,
  rttP99Us: 250,
});

/** The scenario's edges, apart from node-s's synthetic ones. */
export const SCENARIO_EDGES: readonly ExpectedEdge[] = [
  {
    source: "workload:frontend",
    target: "workload:checkout",
    flows: 3,
    bytesToTarget: 2400,
    bytesToSource: 10800,
    failed: 1,
    resets: 1,
    rttP50Us: 100,
    rttP99Us: 300,
  },
  one("workload:checkout", "workload:db"),
  one("workload:checkout", "ambiguous"),
  one("workload:checkout", "workload:payments-v1"),
  one("workload:checkout", "workload:payments-v2"),
  one("workload:checkout", "unattributed:10.0.0.0/8"),
  one("workload:checkout", "external"),
  one("workload:checkout", "pending"),
  one("workload:intruder", "unattributed:10.0.0.0/8"),
  one("unidentified:node-z", "workload:db"),
  // Inbound reports: the server's bytes_acked went to the client.
  {
    ...one("unattributed:10.0.0.0/8", "workload:payments-v1"),
    bytesToTarget: 5400,
    bytesToSource: 1200,
  },
  {
    ...one("unattributed:10.0.0.0/8", "workload:payments-v2"),
    bytesToTarget: 5400,
    bytesToSource: 1200,
  },
  { ...one("unattributed:10.0.0.0/8", "workload:db"), bytesToTarget: 5400, bytesToSource: 1200 },
];

/**
 * A database holding the scenario of tests/_graph_scenario.ts, attributed by the collector's
 * own ingest path: the held flows expired before the late batch came; `after` comes last.
 */
export async function withScenario(
  body: (db: string) => Promise<void> | void,
  after: readonly ScenarioBatch[] = [],
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "collector_graph_test_" });
  const db = `${dir}/flows.db`;
  try {
    using store = FlowStore.open(db);
    let nowNs = nsAt(400);
    const ingestor = Ingestor.open(store, { holdNs: 1_000_000_000n, now: () => nowNs });
    for (const b of scenarioBatches()) {
      ingestor.ingestBody(batchCbor(b.hostname, b.sequence, b.flows));
    }
    nowNs += 2_000_000_000n;
    ingestor.tick();
    for (const b of [SCENARIO_LATE_BATCH, ...after]) {
      ingestor.ingestBody(batchCbor(b.hostname, b.sequence, b.flows));
    }
    await body(db);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The edges between the scenario's own nodes (node-s's synthetic ones left out). */
export function scenarioEdges(edges: readonly EdgeStats[]): ExpectedEdge[] {
  const own = new Set(SCENARIO_EDGES.flatMap((e) => [e.source, e.target]));
  return edges
    .filter((e) => own.has(e.source) && own.has(e.target))
    .map((e) => ({
      source: e.source,
      target: e.target,
      flows: e.flows,
      bytesToTarget: e.bytesToTarget,
      bytesToSource: e.bytesToSource,
      failed: e.failed,
      resets: e.resets,
      rttP50Us: e.rttP50Us,
      rttP99Us: e.rttP99Us,
    }));
}

export const byEnds = (
  a: { source: string; target: string },
  b: { source: string; target: string },
) => a.source.localeCompare(b.source) || a.target.localeCompare(b.target);

/** Checks `source`'s latest flows of three edges of the scenario (its batches, no `after`). */
export async function assertScenarioEdgeFlows(source: GraphSource): Promise<void> {
  const flows = await source.edgeFlows(
    "workload:frontend",
    "workload:checkout",
    SCENARIO_RANGE,
    10,
  );
  assert.deepEqual(flows.map((f) => [f.hostname, f.localPort, f.end]), [
    ["node-f", 50003, "reset"],
    ["node-f", 50002, "refused"],
    ["node-f", 50001, "normal"],
  ]);
  assert.equal(flows[0].remoteWorkloadId, "checkout");
  const limited = await source.edgeFlows(
    "workload:frontend",
    "workload:checkout",
    SCENARIO_RANGE,
    1,
  );
  assert.deepEqual(limited.map((f) => f.localPort), [50003]);
  const grouped = await source.edgeFlows(
    "unattributed:10.0.0.0/8",
    "workload:db",
    SCENARIO_RANGE,
    10,
  );
  assert.deepEqual(grouped.map((f) => [f.hostname, f.direction, f.attribution]), [
    ["node-b", "inbound", "unattributed"],
  ]);
}
