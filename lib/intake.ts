/**
 * Where raw records from the kernel enter the pipeline: encode and ship, journal, then give the
 * ring buffer's space back. The order is the guarantee: a record leaves the ring only once the
 * journal holds it, and leaves the journal only once its batch is in the spool
 * ({@linkcode CaptureJournal.sealed}), so an agent that dies anywhere loses nothing.
 *
 * @module
 */
import type { CaptureJournal, JournalChunk } from "./capture_journal.ts";
import type { RecordChunk } from "./fanout.ts";
import { DecodeError, RECORD_SIZE } from "./decode.ts";
import { type FlowWriter, RecordWriter } from "./wire.ts";

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

/** Options of {@linkcode Intake}. */
export interface IntakeOptions {
  /** This boot's ID (16 bytes): records captured now carry it. */
  bootId: Uint8Array;
  /** Wall clock minus the kernel clock, ns, for records read now. */
  clockOffsetNs: () => bigint;
  ring: RingSource;
  journal: Pick<CaptureJournal, "append" | "left" | "dropLeft">;
  /** The batch pipeline: windows numbered from 0, and where flows go. */
  shipper: { readonly openWindow: number; addFlow(flow: FlowWriter): void };
}

/** What {@linkcode Intake.replay} found in the journal. */
export interface ReplayResult {
  /** Flows an earlier run captured that had not reached the spool, now shipped. */
  records: number;
  /** True when the ring was moved past what the journal already held. */
  resumedRing: boolean;
  /** Records of another layout (journaled by another version of the agent): lost, and counted. */
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
    let resumeAt = -1n;
    for (const chunk of journal.left) {
      if (chunk.recordSize !== RECORD_SIZE) {
        unreadable += chunk.records.length / chunk.recordSize;
        continue;
      }
      records += this.#ship(chunk);
      if (chunk.ringId !== 0 && chunk.ringId === ring.ringId && sameBytes(chunk.bootId, bootId)) {
        if (chunk.position > resumeAt) resumeAt = chunk.position;
      }
    }
    journal.dropLeft();
    const resumedRing = resumeAt > ring.consumed() && ring.commit(resumeAt);
    return { records, resumedRing, unreadable };
  }

  /**
   * Ships one poll's records, journals them and commits them.
   *
   * @param bytes whole raw records
   * @param position ring position after them (0 with the perf buffer)
   * @returns them as a journal chunk (boot ID and clock offset included), for stdout and metrics
   */
  receive(bytes: Uint8Array, position: bigint): JournalChunk {
    const { bootId, ring } = this.#options;
    const chunk = {
      bootId,
      ringId: ring.ringId,
      position,
      clockOffsetNs: this.#options.clockOffsetNs(),
      recordSize: ring.recordSize,
      records: bytes,
    };
    this.#ship(chunk);
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
    this.#encode(chunk);
    return chunk;
  }

  /**
   * Adds a chunk's flows to the open window, then journals the chunk under the window open
   * after them: a window that closes on a cap mid-chunk is spooled before the later one, so
   * the journal of the later one lets go last (a crash in between replays that chunk whole).
   */
  #ship(chunk: JournalChunk): number {
    const records = this.#encode(chunk);
    const { shipper, journal } = this.#options;
    journal.append(shipper.openWindow, chunk);
    return records;
  }

  /** Encodes a chunk's records into the open window; returns how many. */
  #encode(chunk: RecordChunk): number {
    const bytes = chunk.records;
    if (bytes.length % RECORD_SIZE !== 0) {
      throw new DecodeError(
        `Cannot take ${bytes.length} bytes of flow records: not a multiple of ${RECORD_SIZE}`,
      );
    }
    // Each record is encoded where it lies: no record object on the way to the batch.
    const writer = new RecordWriter(bytes, chunk.clockOffsetNs, chunk.bootId);
    for (let at = 0; at < bytes.length; at += RECORD_SIZE) {
      writer.at = at;
      this.#options.shipper.addFlow(writer);
    }
    return bytes.length / RECORD_SIZE;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
