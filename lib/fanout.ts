/**
 * What the agent does with each poll's records, once they are in the pipeline: JSON lines to
 * stdout (when asked for), and the counting the metrics report. A stdout that fails (its reader
 * went away) stops the JSON and reports once; the records are already shipped and journaled.
 *
 * @module
 */
import type { RecordsChunk } from "./capture_journal.ts";
import { toWallNs } from "./clock.ts";
import {
  DecodeError,
  RECORD_OFFSETS,
  RECORD_SIZE,
  recordCloseState,
  recordIdentitySource,
} from "./decode.ts";
import type { IdentitySource } from "./flow.ts";
import { RecordJsonWriter } from "./json_lines.ts";
import type { AgentMetrics } from "./metrics.ts";

/** Options of {@linkcode RecordFanout}. */
export interface FanoutOptions {
  /** Writes bytes to stdout, all of them, or throws. Absent: no JSON lines. */
  writeStdout?: (bytes: Uint8Array) => void;
  /** Where the counts go. */
  metrics: Pick<
    AgentMetrics,
    "flowsCaptured" | "bySource" | "flowsRecovered" | "workerLag" | "interimRecords"
  >;
  /** Called once when stdout fails; JSON lines stop then. */
  onStdoutFailed: (error: unknown) => void;
  /** Wall clock now, ns (tests). */
  nowNs?: () => bigint;
}

/** Per-batch counts of {@linkcode tallyRecords}. */
export interface RecordTally {
  bySource: Record<IdentitySource, number>;
  /** Records made at destroy: no program saw the close. */
  recovered: number;
  /** The earliest `tEndNs` of the batch. */
  oldestEndNs: bigint;
}

/** One poll's kernel records, with what they need to be read: what the intake returns. */
export type RecordChunk = Pick<RecordsChunk, "records" | "clockOffsetNs" | "bootId">;

/** Counts a poll's kernel records in one pass, reading them where they lie. */
export function tallyRecords(chunk: RecordChunk): RecordTally {
  const bytes = chunk.records;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bySource = { "port-map": 0, "ip-map": 0, host: 0, unknown: 0 };
  let recovered = 0;
  // The oldest end is found on the times as doubles (exact to the ns below 104 days of uptime,
  // a few ns off above: a lag metric does not mind), then read exactly once.
  let oldestAt = -1;
  let oldestApprox = Infinity;
  for (let at = 0; at + RECORD_SIZE <= bytes.length; at += RECORD_SIZE) {
    bySource[recordIdentitySource(bytes, at)]++;
    if (recordCloseState(bytes, at) === "UNKNOWN") recovered++;
    const end = at + RECORD_OFFSETS.t_end_ns;
    const approx = view.getUint32(end + 4, true) * 2 ** 32 + view.getUint32(end, true);
    if (approx < oldestApprox) {
      oldestApprox = approx;
      oldestAt = at;
    }
  }
  const oldestEndNs = oldestAt < 0 ? 0n : toWallNs(
    view.getBigUint64(oldestAt + RECORD_OFFSETS.t_end_ns, true),
    chunk.clockOffsetNs,
  );
  return { bySource, recovered, oldestEndNs };
}

/**
 * Writes each batch of records as JSON lines and counts it.
 *
 * @example
 * ```ts
 * import { RecordFanout } from "./fanout.ts";
 * declare const fanout: RecordFanout;
 * declare const chunk: import("./fanout.ts").RecordChunk;
 * fanout.take(chunk);
 * ```
 */
export class RecordFanout {
  readonly #options: FanoutOptions;
  #writeStdout: ((bytes: Uint8Array) => void) | undefined;
  /** Reused for every poll's lines (an agent's output is its hottest allocation). */
  readonly #bytes = new Uint8Array(256 * 1024);

  constructor(options: FanoutOptions) {
    this.#options = options;
    this.#writeStdout = options.writeStdout;
  }

  /** True while JSON lines go to stdout. */
  get writingJson(): boolean {
    return this.#writeStdout !== undefined;
  }

  /** Writes (if asked) and counts one poll's records. */
  take(chunk: RecordChunk): void {
    if (chunk.records.length === 0) return;
    this.#write(chunk);
    const { metrics } = this.#options;
    const tally = tallyRecords(chunk);
    metrics.flowsCaptured.add(chunk.records.length / RECORD_SIZE);
    for (const source of Object.keys(tally.bySource) as IdentitySource[]) {
      if (tally.bySource[source]) metrics.bySource[source].add(tally.bySource[source]);
    }
    metrics.flowsRecovered.add(tally.recovered);
    const nowNs = this.#options.nowNs?.() ?? BigInt(Date.now()) * 1_000_000n;
    metrics.workerLag.observe(Number(nowNs - tally.oldestEndNs) / 1e9);
  }

  /**
   * Writes (if asked) and counts a chunk of interim records (an interim pass's): they are no
   * closed flows, and their lag is the pass's, not the pipeline's.
   */
  takeInterim(chunk: RecordChunk): void {
    if (chunk.records.length === 0) return;
    this.#write(chunk);
    this.#options.metrics.interimRecords.add(chunk.records.length / RECORD_SIZE);
  }

  #write(chunk: RecordChunk): void {
    if (!this.#writeStdout) return;
    try {
      this.#writeJson(chunk, this.#writeStdout);
    } catch (error) {
      this.#writeStdout = undefined;
      this.#options.onStdoutFailed(error);
    }
  }

  /**
   * Writes the records as JSON lines straight from their bytes into one reused buffer, handed
   * to `write` whenever the next line might not fit. A record the decoder refuses is left out
   * (the shipper counts and logs it).
   */
  #writeJson(chunk: RecordChunk, write: (bytes: Uint8Array) => void): void {
    const lines = new RecordJsonWriter(chunk.records, chunk.clockOffsetNs, chunk.bootId);
    const out = this.#bytes;
    let used = 0;
    for (let at = 0; at + RECORD_SIZE <= chunk.records.length; at += RECORD_SIZE) {
      if (used + RecordJsonWriter.ROOM > out.length) {
        write(out.subarray(0, used));
        used = 0;
      }
      lines.at = at;
      try {
        used = lines.write(out, used);
      } catch (error) {
        if (!(error instanceof DecodeError)) throw error;
      }
    }
    if (used > 0) write(out.subarray(0, used));
  }
}
