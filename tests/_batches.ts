/**
 * Builds flows and batch bodies as an exporter would send them, for the collector's tests and
 * benchmark.
 *
 * @module
 */

import { Decoder, Encoder } from "cbor-x";
import { gzipSync } from "node:zlib";
import { parseIp } from "../lib/map_layout.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { parseBootId } from "../lib/flow_id.ts";
import { encodeBatch, encodeFlow, SCHEMA_VERSION } from "../lib/wire.ts";

/** A flow between `local` and `remote` (`"ip:port"`, IPv6 as `"[ip]:port"`), times in seconds. */
export interface FlowSpec {
  local: string;
  remote: string;
  workload: string;
  startS: number;
  endS: number;
  direction?: FlowRecord["direction"];
  identitySource?: FlowRecord["identitySource"];
}

/** cbor-x as `lib/wire.ts` sets it up, to take a batch apart and rewrite it. */
export const rawCbor = {
  encoder: new Encoder(
    {
      useRecords: false,
      mapsAsObjects: false,
      useTag259ForMaps: false,
      tagUint8Array: false,
    } as ConstructorParameters<typeof Encoder>[0],
  ),
  decoder: new Decoder({ useRecords: false, mapsAsObjects: false }),
};

/** Base of test times: 2026-01-01T00:00:00Z in ns. */
export const T0_NS = 1_767_225_600_000_000_000n;

/** The boot ID of every flow {@linkcode makeFlow} makes. */
const BOOT_ID = parseBootId("0c9e4f6a-8b1d-4e2f-a3c5-7d9e1f2a4b6c");
/** Cookie of the next flow {@linkcode makeFlow} makes: every flow is a socket of its own. */
let nextCookie = 81_921n;

/**
 * A complete {@linkcode FlowRecord} from a {@linkcode FlowSpec}, with a flow ID of its own (one
 * boot, a new cookie): send the same record twice to repeat a flow.
 */
export function makeFlow(spec: FlowSpec): FlowRecord {
  const [localIp, localPort] = endpoint(spec.local);
  const [remoteIp, remotePort] = endpoint(spec.remote);
  return {
    bootId: BOOT_ID,
    cookie: nextCookie++,
    family: localIp.length === 4 ? 4 : 6,
    localIp,
    localPort,
    remoteIp,
    remotePort,
    localWorkloadId: spec.workload,
    identitySource: spec.identitySource ?? (spec.workload === "" ? "unknown" : "ip-map"),
    tStartNs: nsAt(spec.startS),
    tEndNs: nsAt(spec.endS),
    recordKind: "final",
    seeded: false,
    direction: spec.direction ?? "outbound",
    closeState: "FIN_WAIT2",
    end: "normal",
    error: 0,
    bytesSent: 1200,
    bytesRetrans: 0,
    bytesAcked: 1200,
    bytesReceived: 5400,
    segsOut: 9,
    segsIn: 11,
    totalRetrans: 0,
    srttUs: 250,
    minRttUs: 120,
    delivered: 5,
    lost: 0,
  };
}

/** T0 plus `s` seconds, in ns. */
export function nsAt(s: number): bigint {
  return T0_NS + BigInt(Math.round(s * 1e9));
}

/** An uncompressed CBOR batch body from `hostname` with these flows. */
export function batchCbor(
  hostname: string,
  sequence: number,
  flows: readonly FlowRecord[],
): Uint8Array {
  return encodeBatch({
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "0.1.0",
    host: { hostname, workloadId: `host:${hostname}` },
    sequence,
    windowStartNs: T0_NS,
    windowEndNs: T0_NS + 60_000_000_000n,
    recordCount: flows.length,
    clockOffsetNs: 1_000_000_000n,
    loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
  }, flows.map(encodeFlow));
}

/**
 * An uncompressed CBOR batch body of schema version 2, as agents before version 3 sent it: the
 * flows without `flow_id` and `bytes_retrans` (keys 24 and 25).
 */
export function batchCborV2(
  hostname: string,
  sequence: number,
  flows: readonly FlowRecord[],
): Uint8Array {
  const top = rawCbor.decoder.decode(batchCbor(hostname, sequence, flows)) as Map<number, unknown>;
  top.set(0, 2);
  for (const flow of top.get(9) as Map<number, unknown>[]) {
    flow.delete(24);
    flow.delete(25);
    flow.delete(26);
  }
  return new Uint8Array(rawCbor.encoder.encode(top));
}

/**
 * An interim record of `flow` (same flow ID and start) taken at `atS` seconds, with `counters`
 * as they were then.
 */
export function interimOf(
  flow: FlowRecord,
  atS: number,
  counters: Partial<Pick<FlowRecord, "bytesSent" | "bytesAcked" | "bytesReceived">> = {},
): FlowRecord {
  return {
    ...flow,
    recordKind: "interim",
    end: "open",
    closeState: "ESTABLISHED",
    tEndNs: nsAt(atS),
    ...counters,
  };
}

/** A gzip-compressed batch body, as exporters POST it. */
export function batchBody(
  hostname: string,
  sequence: number,
  flows: readonly FlowRecord[],
): Uint8Array {
  return gzipSync(batchCbor(hostname, sequence, flows));
}

function endpoint(text: string): [Uint8Array, number] {
  const at = text.lastIndexOf(":");
  const host = text.slice(0, at).replace(/^\[|\]$/g, "");
  return [parseIp(host), Number(text.slice(at + 1))];
}

/** POSTs a (gzipped CBOR) batch body to a collector's `/v1/batches`, as the agent's sender does. */
export function postBatch(
  collectorUrl: string,
  payload: Uint8Array | ReadableStream<Uint8Array>,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${collectorUrl}/v1/batches`, {
    method: "POST",
    body: payload as BodyInit,
    headers: { "content-type": "application/cbor", "content-encoding": "gzip", ...headers },
  });
}
