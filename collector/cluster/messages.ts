/**
 * What cluster nodes put on the streams of `streams.ts`, besides the batch bodies themselves:
 * - an ownership entry: a batch's merged heartbeats (JSON, times as decimal strings);
 * - a held entry and an attributed entry: the batch body as received (its flows are not
 *   encoded again) with the indexes they are about, the time the batch was received, and for
 *   attributed ones each flow's verdict (CBOR);
 * - a revocations entry (JSON).
 * Every entry names its version: a node refuses one of a version it does not know, and an
 * upgrade adds a version before it writes it (see docs/cluster.md, "Upgrades").
 *
 * @module
 */

import { Decoder, Encoder } from "cbor-x";
import type { Heartbeats, Revocation, Verdict } from "../attributor.ts";

/** Version of every entry this module writes. */
export const ENTRY_VERSION = 1;

/** A batch body as a node received it and stored it in `FLOW_BATCHES`. */
export interface BatchBody {
  /** The bytes, compressed as `encoding` says. */
  readonly bytes: Uint8Array;
  /** `Content-Encoding` of `bytes`: null for none, else `gzip`. */
  readonly encoding: string | null;
}

/** Flows of one batch waiting in `FLOW_HELD` for their remote owner's heartbeat. */
export interface HeldEntry {
  readonly body: BatchBody;
  readonly receivedNs: bigint;
  /** Indexes, in the batch, of the flows held. */
  readonly indexes: readonly number[];
}

/** Flows of one batch with their verdicts, in `FLOW_OUTPUT`. */
export interface AttributedEntry extends HeldEntry {
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
    v: ENTRY_VERSION,
    r: heartbeats.ranges.map((r) => [r.key, r.workload, `${r.startNs}`, `${r.endNs}`]),
    s: [...heartbeats.shared].map(([key, end]) => [key, `${end}`]),
  }));
}

/** An ownership entry from its bytes. */
export function decodeHeartbeats(bytes: Uint8Array): Heartbeats {
  const entry = parseJson(bytes, "ownership");
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

/** A held entry's bytes. */
export function encodeHeld(entry: HeldEntry): Uint8Array {
  return cbor.encoder.encode(heldFields(entry));
}

/** A held entry from its bytes. */
export function decodeHeld(bytes: Uint8Array): HeldEntry {
  return fromHeldFields(parseCbor(bytes, "held"));
}

/** An attributed entry's bytes; verdicts as `[status, workload, owner key]`. */
export function encodeAttributed(entry: AttributedEntry): Uint8Array {
  return cbor.encoder.encode({
    ...heldFields(entry),
    version: entry.version,
    verdicts: entry.verdicts.map((v) => [v.status, v.workload ?? null, v.ownerKey ?? null]),
  });
}

/** An attributed entry from its bytes. */
export function decodeAttributed(bytes: Uint8Array): AttributedEntry {
  const entry = parseCbor(bytes, "attributed");
  return {
    ...fromHeldFields(entry),
    version: entry.version as 0 | 1,
    verdicts: (entry.verdicts as [Verdict["status"], string | null, string | null][]).map((
      [status, workload, ownerKey],
    ) => (workload === null ? { status } : { status, workload, ownerKey: ownerKey! })),
  };
}

/** The fields held and attributed entries share, as encoded. */
function heldFields(entry: HeldEntry): Record<string, unknown> {
  return {
    v: ENTRY_VERSION,
    body: entry.body.bytes,
    encoding: entry.body.encoding,
    receivedNs: `${entry.receivedNs}`,
    indexes: entry.indexes,
  };
}

function fromHeldFields(entry: Record<string, unknown>): HeldEntry {
  return {
    body: { bytes: entry.body as Uint8Array, encoding: entry.encoding as string | null },
    receivedNs: BigInt(entry.receivedNs as string),
    indexes: entry.indexes as number[],
  };
}

/** A revocations entry's bytes. */
export function encodeRevocations(entry: RevocationsEntry): Uint8Array {
  return text.encoder.encode(JSON.stringify({
    v: ENTRY_VERSION,
    r: entry.revocations.map((r) => ({ ...r, fromNs: `${r.fromNs}`, toNs: `${r.toNs}` })),
  }));
}

/** A revocations entry from its bytes. */
export function decodeRevocations(bytes: Uint8Array): RevocationsEntry {
  const entry = parseJson(bytes, "revocations");
  return {
    revocations: (entry.r as (Revocation & { fromNs: string; toNs: string })[]).map((r) => ({
      ...r,
      fromNs: BigInt(r.fromNs),
      toNs: BigInt(r.toNs),
    })),
  };
}

function parseJson(bytes: Uint8Array, kind: string): Record<string, unknown> {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(text.decoder.decode(bytes));
  } catch (error) {
    throw new EntryError(`Cannot read ${article(kind)} entry: ${(error as Error).message}`);
  }
  return checked(entry, kind);
}

function parseCbor(bytes: Uint8Array, kind: string): Record<string, unknown> {
  let entry: Record<string, unknown>;
  try {
    entry = cbor.decoder.decode(bytes);
  } catch (error) {
    throw new EntryError(`Cannot read ${article(kind)} entry: ${(error as Error).message}`);
  }
  return checked(entry, kind);
}

function checked(entry: Record<string, unknown>, kind: string): Record<string, unknown> {
  if (entry === null || typeof entry !== "object" || entry.v !== ENTRY_VERSION) {
    throw new EntryError(
      `Cannot read ${article(kind)} entry of version ${
        JSON.stringify((entry as { v?: unknown } | null)?.v)
      }: this node reads version ${ENTRY_VERSION} (upgrade it)`,
    );
  }
  return entry;
}

/** `an ownership`, `a held`: the kind with its article. */
function article(kind: string): string {
  return `${/^[aeiou]/.test(kind) ? "an" : "a"} ${kind}`;
}
