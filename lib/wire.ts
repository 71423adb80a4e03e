/**
 * The wire format between exporter and collector: one CBOR batch per HTTP POST, specified in
 * `schema/flow_batch.cddl` (the contract) and explained in `docs/wire_format.md`.
 *
 * The exporter encodes each flow as it arrives ({@linkcode encodeFlow}) and assembles the batch
 * when its window closes ({@linkcode encodeBatch}); the collector decodes and validates it
 * ({@linkcode decodeBatch}).
 *
 * @example Round trip
 * ```ts
 * import { decodeBatch, encodeBatch, encodeFlow, SCHEMA_VERSION } from "./wire.ts";
 * declare const records: import("./flow.ts").FlowRecord[];
 * const body = encodeBatch({
 *   schemaVersion: SCHEMA_VERSION,
 *   exporterVersion: "0.1.0",
 *   host: { hostname: "node-1", workloadId: "" },
 *   sequence: 1,
 *   windowStartNs: 1_700_000_000_000_000_000n,
 *   windowEndNs: 1_700_000_060_000_000_000n,
 *   recordCount: records.length,
 *   clockOffsetNs: 1_699_990_000_000_000_000n,
 *   loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
 * }, records.map(encodeFlow));
 * const { header, flows } = decodeBatch(body);
 * ```
 *
 * @module
 */

import {
  CborError,
  CborReader,
  MAJOR_ARRAY,
  MAJOR_MAP,
  MAJOR_UINT,
  SkippedItem,
} from "./_cbor_reader.ts";
import { CborWriter, textRoom } from "./_cbor_writer.ts";
import { concatBytes } from "./bytes.ts";
import {
  DIRECTIONS,
  FLOW_ENDS,
  type FlowEnd,
  type FlowRecord,
  IDENTITY_SOURCES,
  RECORD_KINDS,
  TCP_STATES,
} from "./flow.ts";
import { BOOT_ID_BYTES, decodeFlowId, FLOW_ID_BYTES, NO_BOOT_ID } from "./flow_id.ts";
import {
  FLAG_INTERIM,
  FLAG_SEEDED,
  flowEnd,
  RECORD_OFFSETS,
  RecordCursor,
  WORKLOAD_ID_LEN,
} from "./decode.ts";

/**
 * Version of the batch schema this module writes (2 added the flow end `unknown`; 3 the flow's
 * `flow_id` and `bytes_retrans`; 4 the flow's `record_kind`, for interim records, and the flow
 * end `open`).
 */
export const SCHEMA_VERSION = 4;

/** Oldest schema version `decodeBatch` still reads: agents may be upgraded after collectors. */
export const OLDEST_READ_SCHEMA_VERSION = 1;

/** `Content-Type` of a batch body (before its `Content-Encoding`, zstd or gzip). */
export const CBOR_MEDIA_TYPE = "application/cbor";

/** Request header that carries {@linkcode idempotencyKey}. */
export const IDEMPOTENCY_KEY_HEADER = "Idempotency-Key";

/**
 * Largest uncompressed batch body an exporter sends (64 MiB). Collectors may refuse larger
 * bodies, and should stop decompressing past it.
 */
export const MAX_BATCH_BYTES = 64 * 1024 * 1024;

/** A batch or flow does not match the schema; the message names the offending field. */
export class WireFormatError extends Error {
  /**
   * @param message one line naming the field, e.g. `Flow 12: local_ip must be 4 or 16 bytes, got 5`
   * @param options standard error options (`cause`)
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "WireFormatError";
  }
}

/** Who sent a batch. */
export interface BatchHost {
  /** The host's name. */
  hostname: string;
  /** The host's own workload identity; "" when unknown. */
  workloadId: string;
  /** Cloud or VM instance ID; absent when unknown. */
  instanceId?: string;
}

/** Losses since the previous batch of the same host. */
export interface LossCounters {
  /** Records the kernel could not hand to the agent (ring buffer full). */
  kernelDrops: bigint;
  /** BPF program runs the kernel skipped because of recursion. */
  recursionMisses: bigint;
  /**
   * Batches that will never arrive because of the spool: evicted unsent (over its cap, or for
   * room on a full disk), or never written to it.
   */
  spoolEvictions: number;
}

/** Everything in a batch but its flows. */
export interface BatchHeader {
  /**
   * {@linkcode SCHEMA_VERSION} for batches this module writes; as read, from
   * {@linkcode OLDEST_READ_SCHEMA_VERSION} to {@linkcode SCHEMA_VERSION}.
   */
  schemaVersion: number;
  /** Version of the exporter that wrote the batch. */
  exporterVersion: string;
  /** Who sent the batch. */
  host: BatchHost;
  /** Per host, +1 per batch, keeps increasing across restarts. */
  sequence: number;
  /** Start of the window the batch covers (inclusive), ns since the epoch. */
  windowStartNs: bigint;
  /** End of the window (exclusive), ns since the epoch; early when the window closed early. */
  windowEndNs: bigint;
  /** Number of flows in the batch. */
  recordCount: number;
  /** Wall clock minus CLOCK_BOOTTIME when the batch closed, ns. */
  clockOffsetNs: bigint;
  /** Losses since the previous batch. */
  loss: LossCounters;
}

/** A decoded, validated batch. */
export interface DecodedBatch {
  /** Everything but the flows. */
  header: BatchHeader;
  /** The flows, in the order the exporter received them. */
  flows: FlowRecord[];
}

/**
 * The idempotency key of a batch, `<hostname>:<sequence>`: a collector that sees the same key
 * twice has received a retry of a batch it already has.
 *
 * @param hostname the sending host's name
 * @param sequence the batch sequence number
 * @returns the key, e.g. `node-1:42`
 */
export function idempotencyKey(hostname: string, sequence: number): string {
  return `${hostname}:${sequence}`;
}

/**
 * Encodes one flow as a CBOR map with the integer keys of `schema/flow_batch.cddl`. Call it
 * as records arrive and concatenate the results; {@linkcode encodeBatch} wraps them. A caller
 * that keeps its own buffer saves the copy with {@linkcode encodeFlowInto}.
 *
 * @param record the flow; validated first, so a bad record can never spoil a whole batch
 * @returns the encoded flow (a view the caller may keep; it is never overwritten)
 * @throws {WireFormatError} when a field is out of range, e.g. a 5-byte `localIp`
 */
export function encodeFlow(record: FlowRecord): Uint8Array {
  const room = maxFlowBytes(record);
  if (poolUsed + room > pool.length) {
    pool = new Uint8Array(Math.max(room, POOL_BYTES));
    poolUsed = 0;
  }
  const start = poolUsed;
  poolUsed = encodeFlowInto(record, pool, start);
  return pool.subarray(start, poolUsed);
}

/**
 * Like {@linkcode encodeFlow}, but writes the flow into `target` from `offset`: the same
 * bytes, with no allocation. Make room first with {@linkcode maxFlowBytes}.
 *
 * @example Flows back to back in one buffer
 * ```ts
 * import { encodeFlowInto, maxFlowBytes } from "./wire.ts";
 * declare const records: import("./flow.ts").FlowRecord[];
 * const buffer = new Uint8Array(records.reduce((n, r) => n + maxFlowBytes(r), 0));
 * let used = 0;
 * for (const record of records) used = encodeFlowInto(record, buffer, used);
 * const flows = buffer.subarray(0, used); // for encodeBatch
 * ```
 *
 * @param record the flow; validated as it is written (on error, bytes past `offset` may have
 *   been overwritten, but nothing before it)
 * @param target the buffer
 * @param offset where the flow starts in `target`
 * @returns the offset just past the flow
 * @throws {WireFormatError} when a field is out of range, e.g. a 5-byte `localIp`
 * @throws {RangeError} when `target` holds fewer than `maxFlowBytes(record)` bytes from `offset`
 */
export function encodeFlowInto(record: FlowRecord, target: Uint8Array, offset: number): number {
  const room = maxFlowBytes(record);
  if (!(offset >= 0 && offset + room <= target.length)) {
    throw new RangeError(
      `Cannot encode a flow at offset ${offset} of a ${target.length}-byte buffer: it needs up to ${room} bytes from there (make room with maxFlowBytes())`,
    );
  }
  const end = writeFlow(record, target, offset);
  if (end >= 0) return end;
  checkFlow(record, "Flow"); // names the field that is out of range
  checkFlowId(record, "Flow");
  // In range but a bigint where a number is declared, or the other way round.
  return writeFlow(withDeclaredTypes(record), target, offset);
}

/**
 * The most bytes {@linkcode encodeFlowInto} writes for `record` (about 200 plus three per
 * character of its workload ID), so that a caller can make room before encoding.
 *
 * @param record the flow, valid or not
 * @returns an upper bound of the flow's encoded size, bytes
 */
export function maxFlowBytes(record: FlowRecord): number {
  return FLOW_FIXED_ROOM + textRoom(textLength(record.localWorkloadId)) +
    textRoom(textLength(record.closeState));
}

/**
 * Assembles a complete batch body (uncompressed CBOR) from its header and flows already
 * encoded with {@linkcode encodeFlow}.
 *
 * @param header the batch header; `schemaVersion` must be {@linkcode SCHEMA_VERSION}
 * @param flows concatenations of {@linkcode encodeFlow} outputs, in order, holding exactly
 *   `header.recordCount` flows (chunk boundaries need not fall between flows)
 * @returns the batch body, at most {@linkcode MAX_BATCH_BYTES} bytes
 * @throws {WireFormatError} when a header field is out of range or the body would be too large
 */
export function encodeBatch(header: BatchHeader, flows: readonly Uint8Array[]): Uint8Array {
  return concatBytes(encodeBatchParts(header, flows));
}

/**
 * Like {@linkcode encodeBatch}, but returns the body as a list of parts whose concatenation is
 * the body: the header, then `flows` as given (not copied). Lets a caller compress or write a
 * large batch without building it in one piece.
 *
 * @param header the batch header; `schemaVersion` must be {@linkcode SCHEMA_VERSION}
 * @param flows as for {@linkcode encodeBatch}
 * @returns the parts of the body, at most {@linkcode MAX_BATCH_BYTES} bytes in total
 * @throws {WireFormatError} when a header field is out of range or the body would be too large
 */
export function encodeBatchParts(header: BatchHeader, flows: readonly Uint8Array[]): Uint8Array[] {
  return [encodeBatchHead(header, flows.reduce((n, chunk) => n + chunk.length, 0)), ...flows];
}

/**
 * The start of a batch body: the header and the head of its flow array, which the flows'
 * encodings ({@linkcode encodeFlow}, back to back) complete. For a caller that holds the flows
 * in another form, e.g. compressed as they came.
 *
 * @param header the batch header; `schemaVersion` must be {@linkcode SCHEMA_VERSION}
 * @param flowBytes the length of the flows' encodings, bytes
 * @throws {WireFormatError} when a header field is out of range or the body would be too large
 */
export function encodeBatchHead(header: BatchHeader, flowBytes: number): Uint8Array {
  checkHeader(header);
  const { host, loss } = header;
  const texts = [header.exporterVersion, host.hostname, host.workloadId, host.instanceId ?? ""];
  const target = new Uint8Array(
    HEADER_FIXED_ROOM + texts.reduce((n, text) => n + textRoom(text.length), 0),
  );
  const w = writer;
  w.reset(target, 0);
  w.head(0xa0, 10); // keys 0 to 8, then 9: the flows
  w.tiny(0);
  w.uint(header.schemaVersion);
  w.tiny(1);
  w.text(header.exporterVersion);
  w.tiny(2);
  w.head(0xa0, host.instanceId === undefined ? 2 : 3);
  w.tiny(0);
  w.text(host.hostname);
  w.tiny(1);
  w.text(host.workloadId);
  if (host.instanceId !== undefined) {
    w.tiny(2);
    w.text(host.instanceId);
  }
  w.tiny(3);
  w.uint(header.sequence);
  w.tiny(4);
  w.uint64(header.windowStartNs);
  w.tiny(5);
  w.uint64(header.windowEndNs);
  w.tiny(6);
  w.uint(header.recordCount);
  w.tiny(7);
  w.int64(header.clockOffsetNs);
  w.tiny(8);
  w.head(0xa0, 3);
  w.tiny(0);
  w.uint64(loss.kernelDrops);
  w.tiny(1);
  w.uint64(loss.recursionMisses);
  w.tiny(2);
  w.uint(loss.spoolEvictions);
  w.tiny(9);
  w.head(0x80, header.recordCount);
  const head = target.slice(0, w.at);
  const size = head.length + flowBytes;
  if (size > MAX_BATCH_BYTES) {
    throw new WireFormatError(
      `Cannot encode batch ${header.sequence}: ${size} bytes exceeds the ${MAX_BATCH_BYTES}-byte limit (lower the batch byte cap)`,
    );
  }
  return head;
}

/** Limits of {@linkcode batchDecoder}, checked before anything is allocated. */
export interface DecodeOptions {
  /**
   * Most flows a batch may hold (default: as many as its bytes can hold, at most one per
   * {@linkcode MIN_FLOW_BYTES}); more is refused with {@linkcode WireLimitError}.
   */
  maxRecords?: number;
}

/**
 * Fewest bytes a flow takes on the wire in any schema version (a version-1 or 2 flow of 24
 * keys, IPv4, every value in one byte); a version-3 flow takes 88 at least, a version-4 one 90. `decodeBatch`
 * refuses a `flows` array that declares more entries than its bytes can hold at this size.
 */
export const MIN_FLOW_BYTES = 58;

/**
 * A batch is well formed but over a limit of {@linkcode batchDecoder}; the message names the
 * limit.
 */
export class WireLimitError extends WireFormatError {
  /**
   * @param message one line naming the limit
   * @param options standard error options (`cause`)
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "WireLimitError";
  }
}

/**
 * Decodes a batch body (uncompressed CBOR) and validates it strictly against
 * `schema/flow_batch.cddl`.
 *
 * Memory and time are bounded by the body's size: a first pass walks the CBOR without building
 * anything and refuses any declared length the bytes left cannot hold (and a `flows` array
 * longer than its bytes can hold flows of {@linkcode MIN_FLOW_BYTES}); the second pass builds
 * the flows. Tags, indefinite lengths, duplicate map keys and text that is not UTF-8 are
 * refused. For a limit on the flow count, see {@linkcode batchDecoder}.
 *
 * @param bytes the body, after its `Content-Encoding` was removed
 * @returns the header and the flows as {@linkcode FlowRecord}s (byte strings are copied; the
 *   flows of one boot share one `bootId`). Flows of versions 1 and 2, which have no `flow_id`
 *   and no `bytes_retrans`, get `bootId` {@linkcode NO_BOOT_ID} (empty), `cookie` 0 and
 *   `bytesRetrans` 0: see `hasFlowId` in `flow_id.ts`.
 * @throws {WireFormatError} naming the first offending field, e.g.
 *   `Unsupported schema version 7 (this collector reads 1 to 3)` or
 *   `Flow 12: local_ip must be 4 or 16 bytes, got 5`
 */
export function decodeBatch(bytes: Uint8Array): DecodedBatch {
  return decodeWithin(bytes, Infinity);
}

/**
 * A {@linkcode decodeBatch} with limits, for a collector: a batch over them is refused with
 * {@linkcode WireLimitError} before any flow is read.
 *
 * @example
 * ```ts
 * import { batchDecoder } from "./wire.ts";
 * declare const body: Uint8Array;
 * const decode = batchDecoder({ maxRecords: 200_000 });
 * const { header, flows } = decode(body);
 * ```
 *
 * @param options the limits
 * @returns the decoding function
 */
export function batchDecoder(options: DecodeOptions): (bytes: Uint8Array) => DecodedBatch {
  const maxRecords = options.maxRecords ?? Infinity;
  return (bytes) => decodeWithin(bytes, maxRecords);
}

function decodeWithin(bytes: Uint8Array, maxRecords: number): DecodedBatch {
  const reader = new CborReader(bytes);
  try {
    const layout = scanBatch(reader, maxRecords);
    return readBatch(reader, layout);
  } catch (error) {
    if (!(error instanceof CborError)) throw error;
    throw new WireFormatError(
      `Cannot decode batch: ${error.incomplete ? "truncated" : "invalid"} CBOR (${error.message})`,
      { cause: error },
    );
  }
}

/** Where the first pass found the batch's parts. */
interface BatchLayout {
  /** Byte offset of the value of each top-level key, -1 when absent. */
  readonly offsets: Int32Array;
  /** Byte offset of the first key that is not one of the schema's, -1 for none. */
  readonly unknownKeyAt: number;
  /**
   * The flows are the batch's last entry and this pass did not walk them: the second pass
   * checks them, and that nothing follows them, as it reads them.
   */
  readonly flowsUnwalked: boolean;
}

/**
 * First pass: checks that the body is one well-formed data item within its bytes, notes where
 * each top-level value starts, and bounds the flow count; builds nothing. Flows that are the
 * last entry (as exporters write them) are left to the second pass, which reads every byte of
 * them anyway: walking them here as well took a fifth of the decoding.
 */
function scanBatch(r: CborReader, maxRecords: number): BatchLayout {
  if (r.peekMajor() !== MAJOR_MAP) {
    throw new WireFormatError(`Batch: the batch must be a map, got ${describeNext(r)}`);
  }
  const offsets = new Int32Array(BATCH_KEYS.length).fill(-1);
  let unknownKeyAt = -1;
  const entries = r.mapLength();
  for (let i = 0; i < entries; i++) {
    const keyAt = r.at;
    const key = r.peekMajor() === MAJOR_UINT ? r.value() : -1;
    if (typeof key !== "number" || key < 0 || key >= BATCH_KEYS.length) {
      if (unknownKeyAt < 0) unknownKeyAt = keyAt;
      if (key === -1) r.skip(); // the key
      r.skip(); // its value
      continue;
    }
    if (offsets[key] >= 0) throw duplicateKey(key, BATCH_KEYS, "Batch", "");
    offsets[key] = r.at;
    if (key !== FLOWS_KEY || r.peekMajor() !== MAJOR_ARRAY) {
      r.skip();
      continue;
    }
    const count = r.arrayLength();
    const fit = Math.floor(r.left / MIN_FLOW_BYTES);
    if (count > fit) {
      throw new WireFormatError(
        `Batch: flows declares ${count} entries, but the ${r.left} bytes that follow hold ${fit} flows at most (${MIN_FLOW_BYTES} bytes each at least)`,
      );
    }
    if (count > maxRecords) {
      throw new WireLimitError(
        `Batch of ${count} flows exceeds the limit of ${maxRecords} flows per batch`,
      );
    }
    if (i === entries - 1) return { offsets, unknownKeyAt, flowsUnwalked: true };
    r.skipItems(count);
  }
  r.end();
  return { offsets, unknownKeyAt, flowsUnwalked: false };
}

/** Second pass: the header and the flows, validated in the order of the schema. */
function readBatch(
  r: CborReader,
  { offsets, unknownKeyAt, flowsUnwalked }: BatchLayout,
): DecodedBatch {
  const at = (key: number): unknown => {
    if (offsets[key] < 0) return undefined;
    r.at = offsets[key];
    return r.value();
  };
  const version = at(0);
  if (
    typeof version !== "number" || !Number.isInteger(version) ||
    version < OLDEST_READ_SCHEMA_VERSION || version > SCHEMA_VERSION
  ) {
    throw new WireFormatError(
      typeof version === "number" || typeof version === "bigint"
        ? `Unsupported schema version ${version} (this collector reads ${OLDEST_READ_SCHEMA_VERSION} to ${SCHEMA_VERSION})`
        : `Batch: schema_version must be an unsigned integer, got ${describe(version)}`,
    );
  }
  if (unknownKeyAt >= 0) {
    r.at = unknownKeyAt;
    throw new WireFormatError(`Batch: unknown key ${describe(r.value())}`);
  }
  BATCH_KEYS.forEach((name, key) => {
    if (offsets[key] < 0) throw new WireFormatError(`Batch: missing ${name} (key ${key})`);
  });
  r.at = offsets[2];
  const hostMap = readMap(r, HOST_KEYS, "Batch", "host", "host.");
  r.at = offsets[8];
  const lossMap = readMap(r, LOSS_KEYS, "Batch", "loss", "loss.");
  const host: BatchHost = {
    hostname: text(hostMap[0], "Batch", "host.hostname"),
    workloadId: text(hostMap[1], "Batch", "host.workload_id"),
  };
  if (hostMap[2] !== ABSENT) host.instanceId = text(hostMap[2], "Batch", "host.instance_id");
  const header: BatchHeader = {
    schemaVersion: version,
    exporterVersion: text(at(1), "Batch", "exporter_version"),
    host,
    sequence: uint53(at(3), "Batch", "sequence"),
    windowStartNs: time(at(4), "Batch", "window_start_ns"),
    windowEndNs: time(at(5), "Batch", "window_end_ns"),
    recordCount: uint53(at(6), "Batch", "record_count"),
    clockOffsetNs: int64(at(7), "Batch", "clock_offset_ns"),
    loss: {
      kernelDrops: uint63(lossMap[0], "Batch", "loss.kernel_drops"),
      recursionMisses: uint63(lossMap[1], "Batch", "loss.recursion_misses"),
      spoolEvictions: uint53(lossMap[2], "Batch", "loss.spool_evictions"),
    },
  };
  checkWindowOrder(header.windowStartNs, header.windowEndNs, "Batch");
  r.at = offsets[FLOWS_KEY];
  if (r.peekMajor() !== MAJOR_ARRAY) {
    throw new WireFormatError(`Batch: flows must be an array, got ${describeNext(r)}`);
  }
  const count = r.arrayLength(); // bounded by the first pass
  if (count !== header.recordCount) {
    throw new WireFormatError(
      `Batch: record_count is ${header.recordCount} but flows has ${count} entries`,
    );
  }
  const layout = FLOW_LAYOUTS[version];
  const flows: FlowRecord[] = new Array(count);
  const slots: unknown[] = new Array(FLOW_KEYS.length);
  const addresses = new AddressArena(count);
  let bootId = NO_BOOT_ID;
  for (let i = 0; i < count; i++) {
    const where = `Flow ${i}`;
    readEntries(r, layout.keys, slots, where, "the flow", "");
    flows[i] = decodeFlow(slots, where, layout, bootId, addresses);
    bootId = flows[i].bootId;
  }
  if (flowsUnwalked) r.end();
  return { header, flows };
}

/** A key the map does not hold, in the slots {@linkcode readEntries} fills. */
const ABSENT: unique symbol = Symbol("absent");

/** Reads a small map of scalar values into a new slot array (see {@linkcode readEntries}). */
function readMap(
  r: CborReader,
  names: readonly string[],
  where: string,
  name: string,
  prefix: string,
): unknown[] {
  const slots: unknown[] = new Array(names.length);
  readEntries(r, names, slots, where, name, prefix);
  return slots;
}

/**
 * Reads a map whose keys are the indexes of `names` into `slots` (the value by key,
 * {@linkcode ABSENT} for a key the map does not hold), refusing unknown and repeated keys, then
 * missing ones (a name ending in `?` is optional).
 */
function readEntries(
  r: CborReader,
  names: readonly string[],
  slots: unknown[],
  where: string,
  name: string,
  prefix: string,
): void {
  if (r.peekMajor() !== MAJOR_MAP) {
    throw new WireFormatError(`${where}: ${name} must be a map, got ${describeNext(r)}`);
  }
  slots.fill(ABSENT, 0, names.length);
  const entries = r.mapLength();
  for (let i = 0; i < entries; i++) {
    const key = r.value();
    if (typeof key !== "number" || !Number.isInteger(key) || key < 0 || key >= names.length) {
      const inside = prefix ? ` in ${prefix.slice(0, -1)}` : "";
      throw new WireFormatError(`${where}: unknown key ${describe(key)}${inside}`);
    }
    if (slots[key] !== ABSENT) throw duplicateKey(key, names, where, prefix);
    slots[key] = r.value();
  }
  for (let key = 0; key < names.length; key++) {
    if (slots[key] === ABSENT && !names[key].endsWith("?")) {
      throw new WireFormatError(`${where}: missing ${prefix}${names[key]} (key ${key})`);
    }
  }
}

function duplicateKey(
  key: number,
  names: readonly string[],
  where: string,
  prefix: string,
): WireFormatError {
  const name = names[key].replace(/\?$/, "");
  const inside = prefix ? ` in ${prefix.slice(0, -1)}` : "";
  return new WireFormatError(`${where}: key ${key} (${name}) appears twice${inside}`);
}

// Enumerations on the wire (schema/flow_batch.cddl): the array index is the code.
const IDENTITY_SOURCE_CODES = codes(IDENTITY_SOURCES);
const DIRECTION_CODES = codes(DIRECTIONS);
const FLOW_END_CODES = codes(FLOW_ENDS);
const RECORD_KIND_CODES = codes(RECORD_KINDS);
const TCP_STATE_CODES = codes<string>(TCP_STATES);

// Wire names by key, for messages and for rejecting unknown keys.
const BATCH_KEYS = [
  "schema_version",
  "exporter_version",
  "host",
  "sequence",
  "window_start_ns",
  "window_end_ns",
  "record_count",
  "clock_offset_ns",
  "loss",
  "flows",
];
/** Key of the flows in a batch. */
const FLOWS_KEY = 9;
const HOST_KEYS = ["hostname", "workload_id", "instance_id?"];
const LOSS_KEYS = ["kernel_drops", "recursion_misses", "spool_evictions"];
/** A flow's keys on the wire, by integer key (schema/flow_batch.cddl): the index is the key. */
export const FLOW_KEYS = [
  "local_ip",
  "local_workload_id",
  "t_start_ns",
  "t_end_ns",
  "family",
  "local_port",
  "remote_ip",
  "remote_port",
  "identity_source",
  "seeded",
  "direction",
  "close_state",
  "end",
  "error",
  "bytes_sent",
  "bytes_acked",
  "bytes_received",
  "segs_out",
  "segs_in",
  "total_retrans",
  "srtt_us",
  "min_rtt_us",
  "delivered",
  "lost",
  "flow_id",
  "bytes_retrans",
  "record_kind",
];

/** What the flows of one schema version hold. */
interface FlowLayout {
  /** The flow ends the version knows. */
  readonly ends: readonly FlowEnd[];
  /** The flow's keys: wire names by key. */
  readonly keys: readonly string[];
}
/** Keys of the flows of versions 1 and 2: no `flow_id`, no `bytes_retrans`. */
const FLOW_KEYS_V1 = FLOW_KEYS.slice(0, 24);
/** Keys of the flows of version 3: no `record_kind` (every record was final). */
const FLOW_KEYS_V3 = FLOW_KEYS.slice(0, 26);
/** Flow ends of final records; `open` is an interim record's. */
const CLOSED_ENDS = FLOW_ENDS.filter((end) => end !== "open");
/**
 * Version 1 had no flow end `unknown`; version 3 added `flow_id` and `bytes_retrans`; version 4
 * `record_kind` and the end `open`.
 */
const FLOW_LAYOUTS: Record<number, FlowLayout> = {
  1: { ends: CLOSED_ENDS.filter((end) => end !== "unknown"), keys: FLOW_KEYS_V1 },
  2: { ends: CLOSED_ENDS, keys: FLOW_KEYS_V1 },
  3: { ends: CLOSED_ENDS, keys: FLOW_KEYS_V3 },
  4: { ends: FLOW_ENDS, keys: FLOW_KEYS },
};

/** The fields FlowRecord declares as bigint. */
const BIGINT_FIELDS = new Set(["tStartNs", "tEndNs", "cookie"]);

const UINT32_MAX = 0xffff_ffff;
const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

// Flows and batch heads are written by hand, in the bytes cbor-x writes for the same maps (with
// no tag 259 on maps and no tag 64 on byte strings) but about five times faster for a flow: no
// map to fill, no type dispatch per value. The agent loads no CBOR library (cbor-x and the
// npm compatibility it pulls in cost an idle agent about 20 MiB).
const writer = new CborWriter();
// encodeFlow returns views of a pool, as cbor-x does: a copy of its own would cost more than
// the encoding. A full pool is left to the views that hold it.
const POOL_BYTES = 64 * 1024;
let pool = new Uint8Array(POOL_BYTES);
let poolUsed = 0;
/**
 * Room for a flow but its two text strings: map head, 27 keys (three of 2 bytes), 2 addresses,
 * flow ID, 2 times, 4 byte counters, 7 uint32 counters, 2 ports, error, 6 one-byte values.
 */
const FLOW_FIXED_ROOM = 2 + 30 + 2 * 17 + 2 + FLOW_ID_BYTES + 2 * 9 + 4 * 9 + 7 * 5 + 2 * 3 +
  5 + 6;

function codes<T extends string>(names: readonly T[]): Map<T, number> {
  return new Map(names.map((name, i) => [name, i]));
}

/**
 * Room for a batch head but its four text strings: the map heads, 14 keys, 8 integers of up to
 * 9 bytes and the flow array's head.
 */
const HEADER_FIXED_ROOM = 3 + 14 + 8 * 9 + 9;

/**
 * Writes a flow as cbor-x writes the map of keys 0 to 26 (a 27-entry map head, then each key
 * and its value in key order), checking each field on the way.
 *
 * @returns the offset past the flow, or -1 (some bytes may have been written) when a field is
 *   out of range or not of the type {@linkcode FlowRecord} declares; `target` must have room
 */
function writeFlow(r: FlowRecord, target: Uint8Array, offset: number): number {
  const ipLength = r.family === 4 ? 4 : r.family === 6 ? 16 : -1;
  const { bootId, localIp, remoteIp, localWorkloadId, closeState } = r;
  const identitySource = IDENTITY_SOURCE_CODES.get(r.identitySource);
  const direction = DIRECTION_CODES.get(r.direction);
  const end = FLOW_END_CODES.get(r.end);
  const recordKind = RECORD_KIND_CODES.get(r.recordKind);
  if (
    !(localIp instanceof Uint8Array) || localIp.length !== ipLength ||
    !(remoteIp instanceof Uint8Array) || remoteIp.length !== ipLength ||
    typeof localWorkloadId !== "string" || typeof closeState !== "string" || closeState === "" ||
    !isTime(r.tStartNs) || !isTime(r.tEndNs) || r.tEndNs < r.tStartNs ||
    !isUint32(r.localPort) || r.localPort > 0xffff ||
    !isUint32(r.remotePort) || r.remotePort > 0xffff ||
    identitySource === undefined || direction === undefined || end === undefined ||
    recordKind === undefined || (end === OPEN_END_CODE) !== (recordKind === INTERIM_CODE) ||
    typeof r.seeded !== "boolean" || !isUint32(r.error) ||
    !isUint53(r.bytesSent) || !isUint53(r.bytesAcked) || !isUint53(r.bytesReceived) ||
    !(bootId instanceof Uint8Array) || bootId.length !== BOOT_ID_BYTES || !isUint64(r.cookie) ||
    !isUint53(r.bytesRetrans) ||
    !isUint32(r.segsOut) || !isUint32(r.segsIn) || !isUint32(r.totalRetrans) ||
    !isUint32(r.srttUs) || !isUint32(r.minRttUs) || !isUint32(r.delivered) || !isUint32(r.lost)
  ) {
    return -1;
  }
  const w = writer;
  w.reset(target, offset);
  w.head(0xa0, 27);
  w.tiny(0);
  w.byteString(localIp);
  w.tiny(1);
  w.text(localWorkloadId);
  w.tiny(2);
  w.uint64(r.tStartNs);
  w.tiny(3);
  w.uint64(r.tEndNs);
  w.tiny(4);
  w.tiny(r.family);
  w.tiny(5);
  w.uint(r.localPort);
  w.tiny(6);
  w.byteString(remoteIp);
  w.tiny(7);
  w.uint(r.remotePort);
  w.tiny(8);
  w.tiny(identitySource);
  w.tiny(9);
  w.bool(r.seeded);
  w.tiny(10);
  w.tiny(direction);
  w.tiny(11);
  const state = TCP_STATE_CODES.get(closeState);
  if (state === undefined) w.text(closeState);
  else w.tiny(state);
  w.tiny(12);
  w.tiny(end);
  w.tiny(13);
  w.uint(r.error);
  w.tiny(14);
  w.uint(r.bytesSent);
  w.tiny(15);
  w.uint(r.bytesAcked);
  w.tiny(16);
  w.uint(r.bytesReceived);
  w.tiny(17);
  w.uint(r.segsOut);
  w.tiny(18);
  w.uint(r.segsIn);
  w.tiny(19);
  w.uint(r.totalRetrans);
  w.tiny(20);
  w.uint(r.srttUs);
  w.tiny(21);
  w.uint(r.minRttUs);
  w.tiny(22);
  w.uint(r.delivered);
  w.tiny(23);
  w.uint(r.lost);
  w.head(0, 24);
  w.bytesThenUint64(bootId, r.cookie);
  w.head(0, 25);
  w.uint(r.bytesRetrans);
  w.head(0, 26);
  w.tiny(recordKind);
  return w.at;
}

/** Writes one flow's CBOR at `offset` of `target`, in at most `room` bytes; returns its end. */
export interface FlowWriter {
  /** The most bytes {@linkcode FlowWriter.write} writes. */
  readonly room: number;
  /**
   * @throws {WireFormatError} when the flow is invalid (nothing written that counts)
   */
  write(target: Uint8Array, offset: number): number;
}

/** A flow record as a {@linkcode FlowWriter}: {@linkcode encodeFlowInto} in {@linkcode maxFlowBytes}. */
export function flowWriterOf(record: FlowRecord): FlowWriter {
  return {
    room: maxFlowBytes(record),
    write: (target, offset) => encodeFlowInto(record, target, offset),
  };
}

/** Record fields that are 64-bit counters on the wire (uint, at most 2^53 - 1 there). */
const RECORD_COUNTERS_64 = [
  RECORD_OFFSETS.bytes_sent,
  RECORD_OFFSETS.bytes_acked,
  RECORD_OFFSETS.bytes_received,
] as const;
/** The 64-bit fields a flow holds as numbers (uint up to 2^53 - 1 on the wire). */
const RECORD_SAFE_64 = [...RECORD_COUNTERS_64, RECORD_OFFSETS.bytes_retrans];
const isAscii = (byte: number) => byte < 0x80;
/** Record fields that are 32-bit counters, in wire-key order from key 17. */
const RECORD_COUNTERS_32 = [
  RECORD_OFFSETS.segs_out,
  RECORD_OFFSETS.segs_in,
  RECORD_OFFSETS.total_retrans,
  RECORD_OFFSETS.srtt_us,
  RECORD_OFFSETS.min_rtt_us,
  RECORD_OFFSETS.delivered,
  RECORD_OFFSETS.lost,
] as const;
const OPEN_END_CODE = FLOW_END_CODES.get("open")!;
const INTERIM_CODE = RECORD_KIND_CODES.get("interim")!;
/** Kernel socket errors are one byte (`struct fe_flow`'s `error`). */
const ERRORS = 256;

/**
 * What an encoder of kernel records needs besides the records to write what
 * {@linkcode RecordWriter} writes: the shim's (ffi/record_encoder.ts) takes it from here.
 */
export interface RecordEncoding {
  /** The most bytes one flow takes. */
  readonly room: number;
  /** Counts of TCP states, identity sources and directions: a code below its count is written as it is, another as 0. */
  readonly tcpStates: number;
  readonly identitySources: number;
  readonly directions: number;
  /** Wire code of the flow end of an interim record. */
  readonly openEndCode: number;
  /** Wire code of the record kind of an interim record (a final one's is 0). */
  readonly interimCode: number;
  /** Wire code of the flow end of a final record, at `closeState * 256 + error`. */
  readonly endCodes: Uint8Array;
}

/** {@linkcode RecordEncoding} of this schema version. */
export const RECORD_ENCODING: RecordEncoding = {
  room: FLOW_FIXED_ROOM + textRoom(WORKLOAD_ID_LEN) + textRoom(0),
  tcpStates: TCP_STATES.length,
  identitySources: IDENTITY_SOURCES.length,
  directions: DIRECTIONS.length,
  openEndCode: OPEN_END_CODE,
  interimCode: INTERIM_CODE,
  endCodes: Uint8Array.from(
    { length: TCP_STATES.length * ERRORS },
    (_, i) => FLOW_END_CODES.get(flowEnd(TCP_STATES[Math.floor(i / ERRORS)], i % ERRORS))!,
  ),
};

/**
 * Encodes kernel records (`struct fe_flow`, lib/decode.ts) straight into their wire form, byte
 * for byte what {@linkcode encodeFlowInto} writes for the record lib/decode.ts makes, without
 * building the record: no object, no bigint, and the workload ID copied as it is when it is
 * ASCII. A record it cannot take that way (another family, a non-ASCII workload ID, a counter
 * past 2^53 - 1, a time out of range or an end before the start) is decoded and goes through
 * encodeFlowInto, so the outcome, errors included, is theirs.
 *
 * @example
 * ```ts
 * import { RecordWriter } from "./wire.ts";
 * declare const bytes: Uint8Array, bootId: Uint8Array, target: Uint8Array;
 * const writer = new RecordWriter(bytes, 0n, bootId);
 * writer.at = 0; // the first record
 * const end = writer.write(target, 0);
 * ```
 */
export class RecordWriter extends RecordCursor implements FlowWriter {
  readonly room = RECORD_ENCODING.room;

  /** Encodes the record at {@linkcode RecordCursor.at} into `target` at `offset`. */
  write(target: Uint8Array, offset: number): number {
    const end = this.#writeDirect(target, offset);
    return end >= 0 ? end : encodeFlowInto(this.decode(), target, offset);
  }

  #writeDirect(target: Uint8Array, offset: number): number {
    const O = RECORD_OFFSETS;
    if (!this.plausible() || !this.safe(RECORD_SAFE_64)) return -1;
    const workloadLength = this.workloadLength(isAscii);
    if (workloadLength < 0) return -1;
    const { bytes, view, at } = this;
    const startHi = this.u32(O.t_start_ns + 4);
    const endHi = this.u32(O.t_end_ns + 4);
    if (endHi < startHi || (endHi === startHi && this.u32(O.t_end_ns) < this.u32(O.t_start_ns))) {
      return -1; // ends before it starts: the encoder's error
    }
    const family = this.u8(O.family);
    const state = this.u8(O.close_state) < TCP_STATES.length ? this.u8(O.close_state) : 0;
    const error = this.u8(O.error);
    const identity = this.u8(O.identity_source);
    const direction = this.u8(O.direction);
    const interim = (this.u8(O.flags) & FLAG_INTERIM) !== 0;
    const ipStart = family === 4 ? 12 : 0;
    const ipLength = family === 4 ? 4 : 16;

    const w = writer;
    w.reset(target, offset);
    w.head(0xa0, 27);
    w.tiny(0);
    w.byteStringOf(bytes, at + O.local_ip + ipStart, ipLength);
    w.tiny(1);
    w.asciiTextOf(bytes, at + O.workload_id, workloadLength);
    w.tiny(2);
    this.wallTime(O.t_start_ns);
    w.uint64Halves(this.hi, this.lo);
    w.tiny(3);
    this.wallTime(O.t_end_ns);
    w.uint64Halves(this.hi, this.lo);
    w.tiny(4);
    w.tiny(family);
    w.tiny(5);
    w.head(0, view.getUint16(at + O.local_port, true));
    w.tiny(6);
    w.byteStringOf(bytes, at + O.remote_ip + ipStart, ipLength);
    w.tiny(7);
    w.head(0, view.getUint16(at + O.remote_port, true));
    w.tiny(8);
    w.tiny(identity < IDENTITY_SOURCES.length ? identity : 0);
    w.tiny(9);
    w.bool((this.u8(O.flags) & FLAG_SEEDED) !== 0);
    w.tiny(10);
    w.tiny(direction < DIRECTIONS.length ? direction : 0);
    w.tiny(11);
    w.tiny(state);
    w.tiny(12);
    w.tiny(interim ? OPEN_END_CODE : RECORD_ENCODING.endCodes[state * ERRORS + error]);
    w.tiny(13);
    w.head(0, error);
    for (let i = 0; i < RECORD_COUNTERS_64.length; i++) {
      w.tiny(14 + i);
      const field = RECORD_COUNTERS_64[i];
      w.uint64Halves(this.u32(field + 4), this.u32(field));
    }
    for (let i = 0; i < RECORD_COUNTERS_32.length; i++) {
      w.tiny(17 + i);
      w.head(0, this.u32(RECORD_COUNTERS_32[i]));
    }
    w.head(0, 24);
    w.bytesThenReversed8(this.bootId, bytes, at + O.cookie);
    w.head(0, 25);
    w.uint64Halves(this.u32(O.bytes_retrans + 4), this.u32(O.bytes_retrans));
    w.head(0, 26);
    w.tiny(interim ? INTERIM_CODE : 0);
    return w.at;
  }
}

// The fast twins of uint(), uint53(), uint64() and time() below: same ranges, declared types only.
function isUint32(n: number): boolean {
  return typeof n === "number" && n >>> 0 === n;
}

function isUint53(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

function isUint64(n: bigint): boolean {
  return typeof n === "bigint" && n >= 0n && n <= UINT64_MAX;
}

function isTime(n: bigint): boolean {
  return typeof n === "bigint" && n >= 0n && n <= INT64_MAX;
}

/** A copy of a valid flow with bigint times and cookie and number counters, as declared. */
function withDeclaredTypes(r: FlowRecord): FlowRecord {
  const copy = { ...r };
  for (const [key, value] of Object.entries(copy)) {
    if (BIGINT_FIELDS.has(key)) (copy as Record<string, unknown>)[key] = BigInt(value as number);
    else if (typeof value === "bigint") (copy as Record<string, unknown>)[key] = Number(value);
  }
  return copy;
}

function textLength(value: unknown): number {
  return typeof value === "string" ? value.length : 0;
}

/**
 * Checks one flow of a batch, read into `m` by key (see {@linkcode readEntries}).
 *
 * @param previousBootId the previous flow's boot ID, shared with this flow when the same
 * @param addresses where its addresses are copied to
 */
function decodeFlow(
  m: readonly unknown[],
  where: string,
  layout: FlowLayout,
  previousBootId: Uint8Array,
  addresses: AddressArena,
): FlowRecord {
  const family = m[4];
  if (family !== 4 && family !== 6) {
    throw new WireFormatError(`${where}: family must be 4 or 6, got ${describe(family)}`);
  }
  const closeState = m[11];
  const { bootId, cookie } = layout.keys.length > 24
    ? decodeFlowId(flowIdBytes(m[24], where), previousBootId)
    : { bootId: NO_BOOT_ID, cookie: 0n };
  const record: FlowRecord = {
    bootId,
    cookie,
    family,
    localIp: addresses.copy(bytes(m[0], where, "local_ip")),
    localPort: uint(m[5], 0xffff, where, "local_port"),
    remoteIp: addresses.copy(bytes(m[6], where, "remote_ip")),
    remotePort: uint(m[7], 0xffff, where, "remote_port"),
    localWorkloadId: text(m[1], where, "local_workload_id"),
    identitySource: enumeration(m[8], IDENTITY_SOURCES, where, "identity_source"),
    tStartNs: time(m[2], where, "t_start_ns"),
    tEndNs: time(m[3], where, "t_end_ns"),
    recordKind: layout.keys.length > 26
      ? enumeration(m[26], RECORD_KINDS, where, "record_kind")
      : "final",
    seeded: bool(m[9], where, "seeded"),
    direction: enumeration(m[10], DIRECTIONS, where, "direction"),
    closeState: typeof closeState === "string"
      ? closeState
      : enumeration(closeState, TCP_STATES, where, "close_state"),
    end: enumeration(m[12], layout.ends, where, "end"),
    error: uint(m[13], UINT32_MAX, where, "error"),
    bytesSent: uint53(m[14], where, "bytes_sent"),
    bytesRetrans: layout.keys.length > 25 ? uint53(m[25], where, "bytes_retrans") : 0,
    bytesAcked: uint53(m[15], where, "bytes_acked"),
    bytesReceived: uint53(m[16], where, "bytes_received"),
    segsOut: uint(m[17], UINT32_MAX, where, "segs_out"),
    segsIn: uint(m[18], UINT32_MAX, where, "segs_in"),
    totalRetrans: uint(m[19], UINT32_MAX, where, "total_retrans"),
    srttUs: uint(m[20], UINT32_MAX, where, "srtt_us"),
    minRttUs: uint(m[21], UINT32_MAX, where, "min_rtt_us"),
    delivered: uint(m[22], UINT32_MAX, where, "delivered"),
    lost: uint(m[23], UINT32_MAX, where, "lost"),
  };
  // Every field was checked as it was read but the addresses' lengths against the family.
  checkIp(record.localIp, family, where, "local_ip");
  checkIp(record.remoteIp, family, where, "remote_ip");
  checkFlowOrder(record, where);
  checkEndOfKind(record, where);
  return record;
}

/** Checks what the TypeScript types do not: ranges, lengths, enumerations. */
function checkFlow(r: FlowRecord, where: string): void {
  if (r.family !== 4 && r.family !== 6) {
    throw new WireFormatError(`${where}: family must be 4 or 6, got ${describe(r.family)}`);
  }
  checkIp(r.localIp, r.family, where, "local_ip");
  checkIp(r.remoteIp, r.family, where, "remote_ip");
  uint(r.localPort, 0xffff, where, "local_port");
  uint(r.remotePort, 0xffff, where, "remote_port");
  text(r.localWorkloadId, where, "local_workload_id");
  code(IDENTITY_SOURCE_CODES, r.identitySource, where, "identity_source");
  time(r.tStartNs, where, "t_start_ns");
  time(r.tEndNs, where, "t_end_ns");
  checkFlowOrder(r, where);
  bool(r.seeded, where, "seeded");
  code(DIRECTION_CODES, r.direction, where, "direction");
  if (typeof r.closeState !== "string" || r.closeState === "") {
    throw new WireFormatError(
      `${where}: close_state must be a TCP state name, got ${describe(r.closeState)}`,
    );
  }
  code(FLOW_END_CODES, r.end, where, "end");
  code(RECORD_KIND_CODES, r.recordKind, where, "record_kind");
  checkEndOfKind(r, where);
  uint(r.error, UINT32_MAX, where, "error");
  uint53(r.bytesSent, where, "bytes_sent");
  uint53(r.bytesRetrans, where, "bytes_retrans");
  uint53(r.bytesAcked, where, "bytes_acked");
  uint53(r.bytesReceived, where, "bytes_received");
  uint(r.segsOut, UINT32_MAX, where, "segs_out");
  uint(r.segsIn, UINT32_MAX, where, "segs_in");
  uint(r.totalRetrans, UINT32_MAX, where, "total_retrans");
  uint(r.srttUs, UINT32_MAX, where, "srtt_us");
  uint(r.minRttUs, UINT32_MAX, where, "min_rtt_us");
  uint(r.delivered, UINT32_MAX, where, "delivered");
  uint(r.lost, UINT32_MAX, where, "lost");
}

/**
 * Checks the parts of a record's flow ID: a decoded flow's are valid or, before version 3,
 * absent; a flow to encode must have them.
 */
function checkFlowId(r: FlowRecord, where: string): void {
  if (!(r.bootId instanceof Uint8Array)) {
    throw new WireFormatError(
      `${where}: flow_id boot ID must be a byte string, got ${describe(r.bootId)}`,
    );
  }
  if (r.bootId.length !== BOOT_ID_BYTES) {
    throw new WireFormatError(
      `${where}: flow_id boot ID must be ${BOOT_ID_BYTES} bytes, got ${r.bootId.length}`,
    );
  }
  uint64(r.cookie, where, "flow_id cookie");
}

function checkHeader(h: BatchHeader): void {
  const where = "Batch";
  if (h.schemaVersion !== SCHEMA_VERSION) {
    throw new WireFormatError(
      `Cannot encode schema version ${h.schemaVersion} (this exporter writes ${SCHEMA_VERSION})`,
    );
  }
  text(h.exporterVersion, where, "exporter_version");
  text(h.host.hostname, where, "host.hostname");
  text(h.host.workloadId, where, "host.workload_id");
  if (h.host.instanceId !== undefined) text(h.host.instanceId, where, "host.instance_id");
  uint53(h.sequence, where, "sequence");
  time(h.windowStartNs, where, "window_start_ns");
  time(h.windowEndNs, where, "window_end_ns");
  checkWindowOrder(h.windowStartNs, h.windowEndNs, where);
  uint53(h.recordCount, where, "record_count");
  int64(h.clockOffsetNs, where, "clock_offset_ns");
  uint63(h.loss.kernelDrops, where, "loss.kernel_drops");
  uint63(h.loss.recursionMisses, where, "loss.recursion_misses");
  uint53(h.loss.spoolEvictions, where, "loss.spool_evictions");
}

function flowIdBytes(value: unknown, where: string): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new WireFormatError(`${where}: flow_id must be a byte string, got ${describe(value)}`);
  }
  if (value.length !== FLOW_ID_BYTES) {
    throw new WireFormatError(
      `${where}: flow_id must be ${FLOW_ID_BYTES} bytes, got ${value.length}`,
    );
  }
  return value;
}

function checkIp(ip: unknown, family: 4 | 6, where: string, name: string): void {
  if (!(ip instanceof Uint8Array)) {
    throw new WireFormatError(`${where}: ${name} must be a byte string, got ${describe(ip)}`);
  }
  if (ip.length !== 4 && ip.length !== 16) {
    throw new WireFormatError(`${where}: ${name} must be 4 or 16 bytes, got ${ip.length}`);
  }
  if (ip.length !== (family === 4 ? 4 : 16)) {
    throw new WireFormatError(`${where}: ${name} has ${ip.length} bytes but family is ${family}`);
  }
}

function text(value: unknown, where: string, name: string): string {
  if (typeof value !== "string") {
    throw new WireFormatError(`${where}: ${name} must be a text string, got ${describe(value)}`);
  }
  return value;
}

function bool(value: unknown, where: string, name: string): boolean {
  if (typeof value !== "boolean") {
    throw new WireFormatError(`${where}: ${name} must be a boolean, got ${describe(value)}`);
  }
  return value;
}

function bytes(value: unknown, where: string, name: string): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new WireFormatError(`${where}: ${name} must be a byte string, got ${describe(value)}`);
  }
  return value;
}

/**
 * The flows' addresses, copied out of the body into one buffer per batch (a copy each would cost
 * a buffer of its own each, and a view of the body would keep the whole body alive).
 */
class AddressArena {
  readonly #buffer: Uint8Array;
  #used = 0;

  /** @param flows flows to make room for: two addresses of at most 16 bytes each */
  constructor(flows: number) {
    this.#buffer = new Uint8Array(flows * 32);
  }

  /** A copy of `address` (a longer one, which the decoder refuses next, gets its own buffer). */
  copy(address: Uint8Array): Uint8Array {
    const start = this.#used;
    if (address.length > 16 || start + address.length > this.#buffer.length) {
      return new Uint8Array(address);
    }
    this.#buffer.set(address, start);
    this.#used = start + address.length;
    return this.#buffer.subarray(start, this.#used);
  }
}

function uint(value: unknown, max: number, where: string, name: string): number {
  const n = typeof value === "bigint" && value <= BigInt(max) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > max) {
    throw new WireFormatError(
      `${where}: ${name} must be an unsigned integer up to ${max}, got ${describe(value)}`,
    );
  }
  return n;
}

function uint53(value: unknown, where: string, name: string): number {
  return uint(value, Number.MAX_SAFE_INTEGER, where, name);
}

function uint64(value: unknown, where: string, name: string): bigint {
  return integer(value, 0n, UINT64_MAX, where, name, "an unsigned 64-bit integer");
}

/**
 * A time (ns since the epoch) or a loss counter: unsigned, and at most 2^63 - 1 so that every
 * reader can hold it in a signed 64-bit integer (SQL databases) instead of capping it.
 */
function uint63(value: unknown, where: string, name: string): bigint {
  return integer(value, 0n, INT64_MAX, where, name, `an unsigned integer up to ${INT64_MAX}`);
}

const time = uint63;

/** A flow cannot end, nor be seen open, before it starts. */
function checkFlowOrder(r: FlowRecord, where: string): void {
  if (r.tEndNs < r.tStartNs) {
    throw new WireFormatError(
      `${where}: t_end_ns ${r.tEndNs} is before t_start_ns ${r.tStartNs} (${
        r.recordKind === "interim"
          ? "an interim record's snapshot cannot precede its flow's start"
          : "a flow cannot end before it starts"
      })`,
    );
  }
}

/** An interim record's flow has not ended (`open`); a final record's has. */
function checkEndOfKind(r: FlowRecord, where: string): void {
  if ((r.end === "open") !== (r.recordKind === "interim")) {
    throw new WireFormatError(
      r.end === "open"
        ? `${where}: end is open, but record_kind is ${r.recordKind} (only an interim record's flow is open)`
        : `${where}: end is ${r.end}, but record_kind is interim (an interim record's end is open)`,
    );
  }
}

/** A window cannot end before it starts (it may end where it starts, closed at once). */
function checkWindowOrder(startNs: bigint, endNs: bigint, where: string): void {
  if (endNs < startNs) {
    throw new WireFormatError(
      `${where}: window_end_ns ${endNs} is before window_start_ns ${startNs} (a window cannot end before it starts)`,
    );
  }
}

function int64(value: unknown, where: string, name: string): bigint {
  return integer(value, INT64_MIN, INT64_MAX, where, name, "a signed 64-bit integer");
}

function integer(
  value: unknown,
  min: bigint,
  max: bigint,
  where: string,
  name: string,
  what: string,
): bigint {
  const n = typeof value === "number" && Number.isInteger(value) ? BigInt(value) : value;
  if (typeof n !== "bigint" || n < min || n > max) {
    throw new WireFormatError(`${where}: ${name} must be ${what}, got ${describe(value)}`);
  }
  return n;
}

function enumeration<T>(
  value: unknown,
  names: readonly T[],
  where: string,
  name: string,
  first = 0,
): T {
  if (
    typeof value !== "number" || !Number.isInteger(value) || value < first || value >= names.length
  ) {
    throw new WireFormatError(
      `${where}: ${name} must be an integer from ${first} to ${names.length - 1}, got ${
        describe(value)
      }`,
    );
  }
  return names[value];
}

function code<T>(codes: Map<T, number>, value: T, where: string, name: string): void {
  if (!codes.has(value)) {
    throw new WireFormatError(
      `${where}: ${name} must be one of ${[...codes.keys()].join(", ")}, got ${describe(value)}`,
    );
  }
}

/** Describes the next data item for a message; an array or a map is not even skipped. */
function describeNext(r: CborReader): string {
  const major = r.peekMajor();
  return major === MAJOR_ARRAY ? "array" : major === MAJOR_MAP ? "map" : describe(r.value());
}

function describe(value: unknown): string {
  if (typeof value === "string") {
    return `text string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value)}`;
  }
  if (value instanceof Uint8Array) return `byte string of ${value.length} bytes`;
  if (value instanceof SkippedItem) return value.kind;
  if (value instanceof Map) return "map";
  if (Array.isArray(value)) return "array";
  if (value === undefined) return "nothing";
  return String(value);
}
