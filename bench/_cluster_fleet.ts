/**
 * The synthetic fleet the cluster benchmarks replay: hosts whose workloads call each other's
 * servers, as gzipped CBOR batches an agent would send. Every call's remote end has a server
 * whose heartbeats come first, so attribution can answer each one.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import type { FlowRecord } from "../lib/flow.ts";
import { parseBootId } from "../lib/flow_id.ts";
import { encodeBatch, encodeFlow, SCHEMA_VERSION } from "../lib/wire.ts";

const BOOT_ID = parseBootId("7a1c9e52-3b4d-4f6a-8e2b-1c3d5e7f9a0b");
/** The port every host's server listens on. */
const SERVER_PORT = 8443;

/** Batch bodies of some hosts, in the order to post them. */
export interface FleetBatches {
  /** One batch per host: its server's heartbeats. */
  heartbeats: Uint8Array[];
  /** Then the batches of calls. */
  traffic: Uint8Array[];
  flows: number;
}

/** Host h's address. */
const ipOf = (h: number) => Uint8Array.of(10, 100 + (h >> 16), (h >> 8) & 0xff, h & 0xff);

/** Makes the batches of a synthetic fleet; see the module documentation. */
export class SyntheticFleet {
  readonly #flowsPerBatch: number;
  readonly #nowNs = BigInt(Date.now()) * 1_000_000n;
  #cookie = 1n;

  /** @param flowsPerBatch calls per batch of calls */
  constructor(flowsPerBatch: number) {
    this.#flowsPerBatch = flowsPerBatch;
  }

  /**
   * Per host of `count` hosts (at least 2) from `first`: one batch of its server's heartbeats
   * (inbound on SERVER_PORT, over the whole run), then `batches` batches of calls to the servers
   * of the other hosts of the set.
   */
  batches(first: number, count: number, batches: number): FleetBatches {
    const t0 = this.#nowNs - 300_000_000_000n;
    const perBatch = this.#flowsPerBatch;
    const heartbeats: Uint8Array[] = [];
    const traffic: Uint8Array[] = [];
    let flows = 0;
    const hostAt = (i: number) => first + (i % count);
    for (let i = 0; i < count; i++) {
      const h = hostAt(i);
      heartbeats.push(
        this.#body(h, 1, [this.#flow(h, SERVER_PORT, hostAt(i + 1), 40000, t0, true)]),
      );
      flows++;
    }
    for (let b = 0; b < batches; b++) {
      for (let i = 0; i < count; i++) {
        const h = hostAt(i);
        const list: FlowRecord[] = [];
        for (let f = 0; f < perBatch; f++) {
          const server = hostAt(i + 1 + ((f * 7919 + b) % (count - 1)));
          const start = t0 + BigInt(b * perBatch + f) * 1_000_000_000n / BigInt(perBatch);
          list.push(this.#flow(h, 32768 + f, server, SERVER_PORT, start + 1_000_000_000n, false));
        }
        traffic.push(this.#body(h, 2 + b, list));
        flows += list.length;
      }
    }
    return { heartbeats, traffic, flows };
  }

  #flow(
    h: number,
    localPort: number,
    remote: number,
    remotePort: number,
    startNs: bigint,
    inbound: boolean,
  ): FlowRecord {
    const cookie = this.#cookie++;
    const i = Number(cookie);
    const sent = 100 + (i * 7919) % 100_000;
    return {
      bootId: BOOT_ID,
      cookie,
      family: 4,
      localIp: ipOf(h),
      localPort,
      remoteIp: ipOf(remote),
      remotePort,
      localWorkloadId: `k8s://team-${h % 37}/service-${h}-7d9f8c6b5-x2x4z`,
      identitySource: "ip-map",
      tStartNs: startNs,
      tEndNs: startNs + 2_000_000_000n,
      seeded: false,
      recordKind: "final",
      direction: inbound ? "inbound" : "outbound",
      closeState: inbound ? "LAST_ACK" : "FIN_WAIT2",
      end: "normal",
      error: 0,
      bytesSent: sent,
      bytesRetrans: 0,
      bytesAcked: sent,
      bytesReceived: 60 + (i * 104_729) % 1_000_000,
      segsOut: 2 + i % 90,
      segsIn: 2 + i % 70,
      totalRetrans: 0,
      srttUs: 80 + i % 4000,
      minRttUs: 40 + i % 2000,
      delivered: 1 + i % 80,
      lost: 0,
    };
  }

  #body(h: number, sequence: number, flows: FlowRecord[]): Uint8Array {
    return gzipSync(encodeBatch({
      schemaVersion: SCHEMA_VERSION,
      exporterVersion: "0.1.0",
      host: { hostname: `host-${h}`, workloadId: `host:host-${h}` },
      sequence,
      windowStartNs: this.#nowNs - 600_000_000_000n,
      windowEndNs: this.#nowNs,
      recordCount: flows.length,
      clockOffsetNs: 0n,
      loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
    }, flows.map(encodeFlow)));
  }
}
