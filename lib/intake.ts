/**
 * Where raw records from the kernel enter the pipeline: encode and ship, journal, then give the
 * ring buffer's space back. The order is the guarantee: a record leaves the ring only once the
 * journal holds it, and leaves the journal only once its batch is in the spool
 * ({@linkcode CaptureJournal.sealed}), so an agent that dies anywhere loses nothing.
 *
 * @module
 */
import type { CaptureJournal, JournalChunk, RecordsChunk, RingSpan } from "./capture_journal.ts";
import type { RecordChunk } from "./fanout.ts";
import { RECORD_OFFSETS, RECORD_SIZE } from "./decode.ts";
import {
  type EncodedFlows,
  encodeRecords,
  FlowBuffer,
  type RunEncoder,
  splitFlows,
} from "./encoded_flows.ts";
import { SCHEMA_VERSION } from "./wire.ts";

/** Where records come from: the kernel side's ring buffer, as the agent sees it. */
export interface RingSource {
  /** Kernel ID of the ring buffer map; 0 for the perf buffer (which cannot hold records back). */
  readonly ringId: number;
  /** Size of one raw record, bytes. */
  readonly recordSize: number;
  /** Gives the ring's space up to `position` back; false when the position is out of range. */
  commit(position: bigint): boolean;
  /** Position the ring has been consumed up to. */
  consumed(): bigint;
}

/**
 * The ring of a capture another state version's agent left pinned, its programs detached: read to
 * its end once, when this agent starts ({@linkcode Intake.retire}).
 */
export interface RetiringRing extends RingSource {
  /**
   * Its next whole records, not yet committed (a view valid until the next call), and the ring
   * position after them; no bytes at the end.
   */
  read(): { bytes: Uint8Array; position: bigint };
}

/** Options of {@linkcode Intake}. */
export interface IntakeOptions {
  /** This boot's ID (16 bytes): records captured now carry it. */
  bootId: Uint8Array;
  /** Wall clock minus the kernel clock, ns, for records read now. */
  clockOffsetNs: () => bigint;
  ring: RingSource;
  journal: Pick<CaptureJournal, "append" | "left" | "dropLeft">;
  /** The batch pipeline: windows numbered from 0, where flows go, and what counts bad ones. */
  shipper: {
    readonly openWindow: number;
    addEncoded(flows: EncodedFlows): void;
    dropInvalid(error: unknown): boolean;
  };
  /** Encodes records in runs (the shim's encoder); default: each through lib/wire.ts. */
  encodeRun?: RunEncoder;
}

/** What {@linkcode Intake.replay} found in the journal. */
export interface ReplayResult {
  /** Flows an earlier run captured that had not reached the spool, now shipped. */
  records: number;
  /** True when the ring was moved past what the journal already held. */
  resumedRing: boolean;
  /**
   * Flows another version of the agent journaled in a form this one cannot read (another record
   * layout or wire schema), or that are damaged: lost, and counted.
   */
  unreadable: number;
}

/**
 * Takes records from the kernel into the pipeline.
 *
 * @example
 * ```ts
 * import { Intake } from "./intake.ts";
 * declare const intake: Intake;
 * declare const bytes: Uint8Array, position: bigint;
 * const chunk = intake.receive(bytes, position); // shipped, journaled, committed
 * ```
 */
export class Intake {
  readonly #options: IntakeOptions;
  /** One chunk's flows as they are encoded, shipped and journaled. */
  readonly #buffer = new FlowBuffer();
  /** Per ring ID: the position up to which the journal holds this boot's records. */
  readonly #journaled = new Map<number, bigint>();
  /**
   * After a retired ring: the cookies of its records, which the own ring may hold again up to
   * `until` (both versions' programs ran then).
   */
  #overlap: { cookies: Set<bigint>; until: bigint } | undefined;

  constructor(options: IntakeOptions) {
    this.#options = options;
  }

  /**
   * Ships an earlier run's journaled flows, journals them again in this run, drops the old
   * files, and moves the ring past what they cover (they were read but not committed). Call
   * once, before the first {@linkcode receive}.
   */
  replay(): ReplayResult {
    const { journal, ring, bootId } = this.#options;
    let records = 0;
    let unreadable = 0;
    for (const chunk of journal.left) {
      const flows = this.#journaledFlows(chunk);
      if (flows === undefined) {
        unreadable += chunk.kind === "flows"
          ? chunk.count
          : chunk.records.length / chunk.recordSize;
        continue;
      }
      records += this.#ship(chunk, flows);
      if (chunk.ringId !== 0 && sameBytes(chunk.bootId, bootId)) {
        const journaled = this.#journaled.get(chunk.ringId) ?? -1n;
        if (chunk.position > journaled) this.#journaled.set(chunk.ringId, chunk.position);
      }
    }
    journal.dropLeft();
    return { records, resumedRing: this.#resume(ring), unreadable };
  }

  /**
   * Ships what a retired capture's ring holds (after {@linkcode replay}, before the first
   * {@linkcode receive}), journaling and committing it like the own ring's records. Until the own
   * ring has been read past `overlapEnd` (its written position once the retired programs had
   * stopped), a record there of a socket the retired ring has a record of is dropped: both
   * versions' programs saw that close.
   *
   * @param take gets each chunk shipped, as {@linkcode receive} returns them (for stdout and
   *   metrics), a view valid only during the call
   * @returns the records shipped
   */
  retire(old: RetiringRing, overlapEnd: bigint, take: (chunk: RecordsChunk) => void): number {
    const { bootId, clockOffsetNs } = this.#options;
    this.#resume(old);
    const cookies = this.#overlap?.cookies ?? new Set<bigint>();
    let records = 0;
    for (;;) {
      const { bytes, position } = old.read();
      if (bytes.length === 0) break;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      for (let at = 0; at + RECORD_SIZE <= bytes.length; at += RECORD_SIZE) {
        cookies.add(cookieAt(view, at));
      }
      const chunk: RecordsChunk = {
        kind: "records",
        bootId,
        ringId: old.ringId,
        position,
        clockOffsetNs: clockOffsetNs(),
        recordSize: old.recordSize,
        records: bytes,
      };
      records += this.#ship(chunk, this.#encode(chunk));
      old.commit(position);
      take(chunk);
    }
    this.#overlap = { cookies, until: overlapEnd };
    return records;
  }

  /**
   * Moves `ring` past what the journal holds of it (read, but not committed, before a crash);
   * true when it moved.
   */
  #resume(ring: RingSource): boolean {
    const journaled = this.#journaled.get(ring.ringId);
    return journaled !== undefined && journaled > ring.consumed() && ring.commit(journaled);
  }

  /**
   * Ships one poll's records, journals them and commits them.
   *
   * @param bytes whole raw records
   * @param position ring position after them (0 with the perf buffer)
   * @returns them as a chunk of records (boot ID and clock offset included), for stdout and
   *   metrics
   */
  receive(bytes: Uint8Array, position: bigint): RecordsChunk {
    const { bootId, ring } = this.#options;
    const overlap = this.#overlap;
    if (overlap !== undefined) {
      bytes = withoutCookies(bytes, overlap.cookies);
      if (position >= overlap.until || overlap.cookies.size === 0) this.#overlap = undefined;
    }
    const chunk: RecordsChunk = {
      kind: "records",
      bootId,
      ringId: ring.ringId,
      position,
      clockOffsetNs: this.#options.clockOffsetNs(),
      recordSize: ring.recordSize,
      records: bytes,
    };
    this.#ship(chunk, this.#encode(chunk));
    if (position !== 0n) ring.commit(position);
    return chunk;
  }

  /**
   * Ships a chunk of interim records (an interim pass's) into the open window. They are not
   * journaled: they are no ring records to give back, and the next window's pass (or the
   * socket's close record) stands in for any a crash loses.
   *
   * @param bytes whole raw records
   * @returns them as a chunk to read (boot ID and clock offset included), for stdout and metrics
   */
  receiveInterim(bytes: Uint8Array): RecordChunk {
    const chunk = {
      bootId: this.#options.bootId,
      clockOffsetNs: this.#options.clockOffsetNs(),
      records: bytes,
    };
    this.#options.shipper.addEncoded(this.#encode(chunk));
    return chunk;
  }

  /**
   * Adds a chunk's flows to the open window, then journals them under the window open after
   * them: a window that closes on a cap mid-chunk is spooled before the later one, so the journal
   * of the later one lets go last (a crash in between replays that chunk whole).
   *
   * @returns how many flows
   */
  #ship(span: RingSpan, flows: EncodedFlows): number {
    const { shipper, journal } = this.#options;
    shipper.addEncoded(flows);
    journal.append(shipper.openWindow, span, flows);
    return flows.ends.length;
  }

  /**
   * Encodes a chunk's records (an invalid one is dropped, and counted by the shipper).
   *
   * @returns the flows, in the intake's buffer: valid until the next call
   */
  #encode(chunk: RecordChunk): EncodedFlows {
    return encodeRecords(
      this.#buffer,
      chunk,
      (error) => this.#options.shipper.dropInvalid(error),
      this.#options.encodeRun,
    );
  }

  /**
   * A journaled chunk's flows, as this version ships them: an earlier version's records encoded
   * now, this version's flows as they are. Undefined when this version cannot read them.
   */
  #journaledFlows(chunk: JournalChunk): EncodedFlows | undefined {
    if (chunk.kind === "records") {
      return chunk.recordSize === RECORD_SIZE ? this.#encode(chunk) : undefined;
    }
    if (chunk.schemaVersion !== SCHEMA_VERSION) return undefined;
    const flows = splitFlows(chunk.flows);
    return flows?.ends.length === chunk.count ? flows : undefined;
  }
}

/** The cookie of the raw record at `at`: which socket, and which of its connections, it is of. */
function cookieAt(view: DataView, at: number): bigint {
  return view.getBigUint64(at + RECORD_OFFSETS.cookie, true);
}

/** `bytes` without the records whose cookie is in `cookies` (each taken out of it once seen). */
function withoutCookies(bytes: Uint8Array, cookies: Set<bigint>): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const kept: number[] = [];
  for (let at = 0; at + RECORD_SIZE <= bytes.length; at += RECORD_SIZE) {
    if (!cookies.delete(cookieAt(view, at))) kept.push(at);
  }
  if (kept.length * RECORD_SIZE === bytes.length) return bytes;
  const out = new Uint8Array(kept.length * RECORD_SIZE);
  kept.forEach((at, i) => out.set(bytes.subarray(at, at + RECORD_SIZE), i * RECORD_SIZE));
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
