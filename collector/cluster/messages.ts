/**
 * What cluster nodes put on the streams of `streams.ts`:
 * - a batch entry (`FLOW_BATCHES`): a validated batch as ingest prepared it, decoded once:
 *   its flows as ClickHouse rows (RowBinary of the `flows` columns but the attribution,
 *   gzip-compressed; clickhouse_store.ts), its `batches` row with the loss counters, and per
 *   flow the remote end attribution looks up (CBOR);
 * - a held entry: a batch entry with the indexes of the flows waiting for their remote owner;
 * - an attributed entry (`FLOW_OUTPUT`): the batch's rows, passed on unchanged for the sink
 *   and any downstream consumer, with the indexes of the flows given verdicts and the verdicts;
 * - an ownership entry: a batch's merged heartbeats (JSON, times as decimal strings);
 * - a revocations entry (JSON).
 * Every entry names its version: a node refuses one of a version it does not know, and an
 * upgrade adds a version before it writes it (see docs/cluster.md, "Upgrades").
 *
 * @module
 */

import { Decoder, Encoder } from "cbor-x";
import type { FlowRecord } from "../../lib/flow.ts";
import {
  type Heartbeats,
  type RemoteEndpoint,
  remoteEndpoint,
  type Revocation,
  type Verdict,
} from "../attributor.ts";

/** Version of the batch, held and attributed entries this module writes. */
export const ENTRY_VERSION = 2;
/** Version of the ownership and revocations entries this module writes. */
export const LOG_ENTRY_VERSION = 1;

/** Bytes per flow in {@linkcode BatchEntry.endpoints}. */
const ENDPOINT_BYTES = 11;

/** A validated batch, prepared once at ingest for attribution and the sink. */
export interface BatchEntry {
  readonly hostname: string;
  readonly sequence: number;
  /** When a node received it, ns since the epoch. */
  readonly receivedNs: bigint;
  /** RowBinary of its `batches` row (header and loss counters). */
  readonly batchRow: Uint8Array;
  /** RowBinary of each flow's row without the attribution, gzip-compressed. */
  readonly flowRows: Uint8Array;
  /** Where each flow's row starts in the uncompressed rows; one more: where the last ends. */
  readonly rowOffsets: Uint32Array;
  /** Per flow, the address key of its remote end. */
  readonly remoteKeys: readonly string[];
  /** Per flow, {@linkcode ENDPOINT_BYTES}: start ns (int64), remote port (u16), inbound (u8). */
  readonly endpoints: Uint8Array;
}

/** The remote end of flow `i` of `entry`, as attribution looks it up. */
export function endpointOf(entry: BatchEntry, i: number): RemoteEndpoint {
  const view = new DataView(
    entry.endpoints.buffer,
    entry.endpoints.byteOffset + i * ENDPOINT_BYTES,
    ENDPOINT_BYTES,
  );
  return remoteEndpoint(
    entry.remoteKeys[i],
    view.getUint16(8, true),
    view.getUint8(10) === 1 ? "inbound" : "outbound",
    view.getBigInt64(0, true),
  );
}

/** The {@linkcode BatchEntry.endpoints} of `flows`. */
export function packEndpoints(flows: readonly FlowRecord[]): Uint8Array {
  const out = new Uint8Array(flows.length * ENDPOINT_BYTES);
  const view = new DataView(out.buffer);
  flows.forEach((f, i) => {
    view.setBigInt64(i * ENDPOINT_BYTES, f.tStartNs, true);
    view.setUint16(i * ENDPOINT_BYTES + 8, f.remotePort, true);
    view.setUint8(i * ENDPOINT_BYTES + 10, f.direction === "inbound" ? 1 : 0);
  });
  return out;
}

/** Flows of one batch waiting in `FLOW_HELD` for their remote owner's heartbeat. */
export interface HeldEntry {
  readonly batch: BatchEntry;
  /** Indexes, in the batch, of the flows held. */
  readonly indexes: readonly number[];
}

/** A batch's rows, as the sink and downstream consumers read them. */
export type BatchRows = Omit<BatchEntry, "remoteKeys" | "endpoints">;

/** Flows of one batch with their verdicts, in `FLOW_OUTPUT`. */
export interface AttributedEntry {
  readonly batch: BatchRows;
  /** Indexes, in the batch, of the flows given verdicts. */
  readonly indexes: readonly number[];
  /** 0: the batch's first attribution (all its flows); 1: settled held flows. */
  readonly version: 0 | 1;
  /** The verdict of each flow in `indexes`, in that order. */
  readonly verdicts: readonly Verdict[];
}

/** Revocations one node derived from one ownership entry, in `FLOW_OUTPUT`. */
export interface RevocationsEntry {
  readonly revocations: readonly Revocation[];
}

/** An entry has a version or a shape this node does not know. */
export class EntryError extends Error {
  /** Creates the error; `message` is one sentence-case line. */
  constructor(message: string) {
    super(message);
    this.name = "EntryError";
  }
}

const cbor = {
  encoder: new Encoder({ useRecords: false } as ConstructorParameters<typeof Encoder>[0]),
  decoder: new Decoder({ useRecords: false }),
};
const text = { encoder: new TextEncoder(), decoder: new TextDecoder() };

/** An ownership entry's bytes. */
export function encodeHeartbeats(heartbeats: Heartbeats): Uint8Array {
  return text.encoder.encode(JSON.stringify({
    v: LOG_ENTRY_VERSION,
    r: heartbeats.ranges.map((r) => [r.key, r.workload, `${r.startNs}`, `${r.endNs}`]),
    s: [...heartbeats.shared].map(([key, end]) => [key, `${end}`]),
  }));
}

/** An ownership entry from its bytes. */
export function decodeHeartbeats(bytes: Uint8Array): Heartbeats {
  const entry = parseJson(bytes, "ownership", LOG_ENTRY_VERSION);
  return {
    ranges: (entry.r as [string, string, string, string][]).map(([key, workload, s, e]) => ({
      key,
      workload,
      startNs: BigInt(s),
      endNs: BigInt(e),
    })),
    shared: new Map((entry.s as [string, string][]).map(([key, end]) => [key, BigInt(end)])),
  };
}

/** A batch entry's bytes. */
export function encodeBatchEntry(entry: BatchEntry): Uint8Array {
  return cbor.encoder.encode({ v: ENTRY_VERSION, batch: batchFields(entry) });
}

/** A batch entry from its bytes. */
export function decodeBatchEntry(bytes: Uint8Array): BatchEntry {
  return fromBatchFields(parseCbor(bytes, "batch", ENTRY_VERSION).batch);
}

/** A held entry's bytes. */
export function encodeHeld(entry: HeldEntry): Uint8Array {
  return cbor.encoder.encode(heldFields(entry));
}

/** A held entry from its bytes. */
export function decodeHeld(bytes: Uint8Array): HeldEntry {
  return fromHeldFields(parseCbor(bytes, "held", ENTRY_VERSION));
}

/** An attributed entry's bytes; verdicts as `[status, workload, owner key]`. */
export function encodeAttributed(entry: AttributedEntry): Uint8Array {
  return cbor.encoder.encode({
    v: ENTRY_VERSION,
    batch: rowsFields(entry.batch),
    indexes: entry.indexes,
    version: entry.version,
    verdicts: entry.verdicts.map((v) => [v.status, v.workload ?? null, v.ownerKey ?? null]),
  });
}

/** An attributed entry from its bytes. */
export function decodeAttributed(bytes: Uint8Array): AttributedEntry {
  const entry = parseCbor(bytes, "attributed", ENTRY_VERSION);
  return {
    batch: fromRowsFields(entry.batch),
    indexes: entry.indexes as number[],
    version: entry.version as 0 | 1,
    verdicts: (entry.verdicts as [Verdict["status"], string | null, string | null][]).map((
      [status, workload, ownerKey],
    ) => (workload === null ? { status } : { status, workload, ownerKey: ownerKey! })),
  };
}

/** A batch's rows as encoded; offsets as little-endian u32 bytes. */
function rowsFields(entry: BatchRows): Record<string, unknown> {
  const offsets = entry.rowOffsets;
  return {
    hostname: entry.hostname,
    sequence: entry.sequence,
    receivedNs: `${entry.receivedNs}`,
    batchRow: entry.batchRow,
    flowRows: entry.flowRows,
    rowOffsets: new Uint8Array(offsets.buffer, offsets.byteOffset, offsets.byteLength),
  };
}

function fromRowsFields(value: unknown): BatchRows {
  const entry = value as Record<string, unknown>;
  const offsets = entry.rowOffsets as Uint8Array;
  return {
    hostname: entry.hostname as string,
    sequence: entry.sequence as number,
    receivedNs: BigInt(entry.receivedNs as string),
    batchRow: entry.batchRow as Uint8Array,
    flowRows: entry.flowRows as Uint8Array,
    // Copied: the decoded bytes need not be 4-byte aligned.
    rowOffsets: new Uint32Array(offsets.slice().buffer),
  };
}

/** A batch entry's fields as encoded: its rows and the remote ends. */
function batchFields(entry: BatchEntry): Record<string, unknown> {
  return { ...rowsFields(entry), remoteKeys: entry.remoteKeys, endpoints: entry.endpoints };
}

function fromBatchFields(value: unknown): BatchEntry {
  const entry = value as Record<string, unknown>;
  return {
    ...fromRowsFields(entry),
    remoteKeys: entry.remoteKeys as string[],
    endpoints: entry.endpoints as Uint8Array,
  };
}

/** The fields held and attributed entries share, as encoded. */
function heldFields(entry: HeldEntry): Record<string, unknown> {
  return { v: ENTRY_VERSION, batch: batchFields(entry.batch), indexes: entry.indexes };
}

function fromHeldFields(entry: Record<string, unknown>): HeldEntry {
  return { batch: fromBatchFields(entry.batch), indexes: entry.indexes as number[] };
}

/** A revocations entry's bytes. */
export function encodeRevocations(entry: RevocationsEntry): Uint8Array {
  return text.encoder.encode(JSON.stringify({
    v: LOG_ENTRY_VERSION,
    r: entry.revocations.map((r) => ({ ...r, fromNs: `${r.fromNs}`, toNs: `${r.toNs}` })),
  }));
}

/** A revocations entry from its bytes. */
export function decodeRevocations(bytes: Uint8Array): RevocationsEntry {
  const entry = parseJson(bytes, "revocations", LOG_ENTRY_VERSION);
  return {
    revocations: (entry.r as (Revocation & { fromNs: string; toNs: string })[]).map((r) => ({
      ...r,
      fromNs: BigInt(r.fromNs),
      toNs: BigInt(r.toNs),
    })),
  };
}

function parseJson(bytes: Uint8Array, kind: string, version: number): Record<string, unknown> {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(text.decoder.decode(bytes));
  } catch (error) {
    throw new EntryError(`Cannot read ${article(kind)} entry: ${(error as Error).message}`);
  }
  return checked(entry, kind, version);
}

function parseCbor(bytes: Uint8Array, kind: string, version: number): Record<string, unknown> {
  let entry: Record<string, unknown>;
  try {
    entry = cbor.decoder.decode(bytes);
  } catch (error) {
    throw new EntryError(`Cannot read ${article(kind)} entry: ${(error as Error).message}`);
  }
  return checked(entry, kind, version);
}

function checked(
  entry: Record<string, unknown>,
  kind: string,
  version: number,
): Record<string, unknown> {
  if (entry === null || typeof entry !== "object" || entry.v !== version) {
    throw new EntryError(
      `Cannot read ${article(kind)} entry of version ${
        JSON.stringify((entry as { v?: unknown } | null)?.v)
      }: this node reads version ${version} (upgrade it)`,
    );
  }
  return entry;
}

/** `an ownership`, `a held`: the kind with its article. */
function article(kind: string): string {
  return `${/^[aeiou]/.test(kind) ? "an" : "a"} ${kind}`;
}
