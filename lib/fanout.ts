/**
 * What the agent does with each poll's records, once they are in the pipeline: JSON lines to
 * stdout (when asked for), and the counting the metrics report. A stdout that fails (its reader
 * went away) stops the JSON and reports once; the records are already shipped and journaled.
 *
 * @module
 */
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

/** Counts a batch's records in one pass. */
export function tallyRecords(records: readonly FlowRecord[]): RecordTally {
  const bySource = { "port-map": 0, "ip-map": 0, host: 0, unknown: 0 };
  let recovered = 0;
  let oldestEndNs = records[0]?.tEndNs ?? 0n;
  for (const r of records) {
    bySource[r.identitySource]++;
    if (r.closeState === "UNKNOWN") recovered++;
    if (r.tEndNs < oldestEndNs) oldestEndNs = r.tEndNs;
  }
  return { bySource, recovered, oldestEndNs };
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
 * declare const records: import("./flow.ts").FlowRecord[];
 * fanout.take(records);
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

  /** Writes (if asked) and counts one batch of records. */
  take(records: readonly FlowRecord[]): void {
    if (records.length === 0) return;
    if (this.#writeStdout) {
      try {
        this.#writeJson(records, this.#writeStdout);
      } catch (error) {
        this.#writeStdout = undefined;
        this.#options.onStdoutFailed(error);
      }
    }
    const { metrics } = this.#options;
    const tally = tallyRecords(records);
    metrics.flowsCaptured.add(records.length);
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
