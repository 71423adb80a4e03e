/**
 * What the agent does with each poll's records, once they are in the pipeline: JSON lines to
 * stdout (when asked for), and the counting the metrics report. A stdout that fails (its reader
 * went away) stops the JSON and reports once; the records are already shipped and journaled.
 *
 * @module
 */
import type { JournalChunk } from "./capture_journal.ts";
import { toWallNs } from "./clock.ts";
import {
  DecodeError,
  decodeFlow,
  RECORD_OFFSETS,
  RECORD_SIZE,
  recordCloseState,
  recordIdentitySource,
} from "./decode.ts";
import type { FlowRecord, IdentitySource } from "./flow.ts";
import { formatFlowJson } from "./json_lines.ts";
import type { AgentMetrics } from "./metrics.ts";

/** Options of {@linkcode RecordFanout}. */
export interface FanoutOptions {
  /** Writes bytes to stdout, all of them, or throws. Absent: no JSON lines. */
  writeStdout?: (bytes: Uint8Array) => void;
  /** Where the counts go. */
  metrics: Pick<AgentMetrics, "flowsCaptured" | "bySource" | "flowsRecovered" | "workerLag">;
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
export type RecordChunk = Pick<JournalChunk, "records" | "clockOffsetNs" | "bootId">;

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
 * A poll's records as objects, for JSON only (the batches are encoded from the raw bytes). A
 * record the decoder refuses is left out here: the shipper counts and logs it.
 */
function jsonRecords(chunk: RecordChunk): FlowRecord[] {
  const records: FlowRecord[] = [];
  for (let at = 0; at + RECORD_SIZE <= chunk.records.length; at += RECORD_SIZE) {
    try {
      records.push(decodeFlow(chunk.records, at, chunk.clockOffsetNs, chunk.bootId));
    } catch (error) {
      if (!(error instanceof DecodeError)) throw error;
    }
  }
  return records;
}

/** UTF-8 takes at most 3 bytes per UTF-16 unit. */
const MAX_UTF8_PER_UNIT = 3;
/** Records per encoded slice: one multi-megabyte string costs more than many small ones. */
const JSON_SLICE = 256;

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
  readonly #encoder = new TextEncoder();
  #writeStdout: ((bytes: Uint8Array) => void) | undefined;
  /** Reused for every slice (an agent's output is its hottest allocation). */
  #bytes = new Uint8Array(256 * 1024);

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
    if (this.#writeStdout) {
      try {
        this.#writeJson(jsonRecords(chunk), this.#writeStdout);
      } catch (error) {
        this.#writeStdout = undefined;
        this.#options.onStdoutFailed(error);
      }
    }
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

  #writeJson(records: readonly FlowRecord[], write: (bytes: Uint8Array) => void): void {
    for (let i = 0; i < records.length; i += JSON_SLICE) {
      let text = "";
      for (const r of records.slice(i, i + JSON_SLICE)) text += formatFlowJson(r) + "\n";
      if (text.length * MAX_UTF8_PER_UNIT > this.#bytes.length) {
        this.#bytes = new Uint8Array(text.length * MAX_UTF8_PER_UNIT);
      }
      const { written } = this.#encoder.encodeInto(text, this.#bytes);
      write(this.#bytes.subarray(0, written));
    }
  }
}
