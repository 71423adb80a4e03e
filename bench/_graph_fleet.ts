/**
 * A collector database of a synthetic fleet for the dependency-map benchmark: `workloads`
 * workloads, each calling `callsPerWorkload` others, and `flows` flows over one hour spread
 * over those edges, with the mix of attribution states a real collector stores (mostly
 * attributed, some reported from both ends, unattributed private and public peers, ambiguous
 * and pending ones). Written through `FlowStore.writeBatch` with the verdicts decided here:
 * the benchmark measures reading, not attribution.
 *
 * @module
 */

import type { BatchWrite } from "../collector/store.ts";
import { FlowStore } from "../collector/store.ts";
import type { Verdict } from "../collector/attributor.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { syntheticFlow } from "../tests/_synthetic_flows.ts";
import { formatIp } from "../lib/map_layout.ts";

/** The shape of the fleet. */
export interface FleetShape {
  workloads: number;
  callsPerWorkload: number;
  flows: number;
  /** Start of the hour the flows start in, ns since the epoch. */
  startNs: bigint;
}

const HOUR_NS = 3_600_000_000_000n;
const BATCH = 10_000;

/** Workload `w`'s ID, about as long as a Kubernetes one. */
export function fleetWorkload(w: number): string {
  return `k8s://team-${w % 41}/service-${w.toString(36).padStart(4, "0")}`;
}

/** Writes the fleet's flows into a new database at `path`; returns the seconds it took. */
export function writeFleet(path: string, shape: FleetShape): number {
  const started = performance.now();
  using store = FlowStore.open(path);
  const edges = shape.workloads * shape.callsPerWorkload;
  for (let first = 0, sequence = 1; first < shape.flows; first += BATCH, sequence++) {
    const flows: FlowRecord[] = [];
    const verdicts: Verdict[] = [];
    const remoteKeys: string[] = [];
    for (let i = first; i < Math.min(shape.flows, first + BATCH); i++) {
      const [flow, verdict] = fleetFlow(i, shape, edges);
      flows.push(flow);
      verdicts.push(verdict);
      remoteKeys.push(formatIp(flow.remoteIp));
    }
    const write: BatchWrite = {
      header: {
        schemaVersion: 3,
        exporterVersion: "bench",
        host: { hostname: `node-${sequence % 50}`, workloadId: "" },
        sequence,
        windowStartNs: shape.startNs,
        windowEndNs: shape.startNs + HOUR_NS,
        recordCount: flows.length,
        clockOffsetNs: 0n,
        loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
      },
      flows,
      remoteKeys,
      verdicts,
      receivedNs: shape.startNs + HOUR_NS,
      resolutions: [],
      revocations: [],
      ranges: new Map(),
      reach: new Map(),
      shared: new Map(),
    };
    store.writeBatch(write);
  }
  return (performance.now() - started) / 1000;
}

/**
 * Flow `i`: on edge `i % edges` (client `e / calls`, server a deterministic other workload);
 * 80 % outbound and attributed, 8 % the server's inbound report of an attributed client,
 * 5 % unattributed (private and public addresses), 4 % ambiguous, 3 % pending.
 */
function fleetFlow(i: number, shape: FleetShape, edges: number): [FlowRecord, Verdict] {
  const base = syntheticFlow(i);
  const edge = i % edges;
  const client = Math.floor(edge / shape.callsPerWorkload);
  const server = (client + 1 + (edge % shape.callsPerWorkload) * 97) % shape.workloads;
  const tStartNs = shape.startNs + BigInt(i) * (HOUR_NS / BigInt(shape.flows));
  const mix = (Math.imul(i, 2_654_435_761) >>> 0) % 100; // independent of the edge
  const flow: FlowRecord = {
    ...base,
    tStartNs,
    tEndNs: tStartNs + 5_000_000n,
    direction: mix >= 80 && mix < 88 ? "inbound" : "outbound",
    localWorkloadId: fleetWorkload(mix >= 80 && mix < 88 ? server : client),
  };
  let verdict: Verdict;
  if (mix < 88) {
    const remote = mix >= 80 ? client : server;
    verdict = {
      status: "attributed",
      workload: fleetWorkload(remote),
      ownerKey: formatIp(base.remoteIp),
    };
  } else if (mix < 93) verdict = { status: "unattributed" };
  else if (mix < 97) verdict = { status: "ambiguous" };
  else verdict = { status: "pending" };
  return [flow, verdict];
}
