/**
 * The capture journal: the records read from the kernel, written before the ring buffer gives
 * their space back, and kept until the window that holds them is safe in the spool. An agent that
 * dies (SIGKILL, OOM, a crash) between reading records and spooling their batch therefore loses
 * none: the next start replays the journal, and resumes reading the ring where the journal ends.
 *
 * One file per batch window of a run (`<run>-<window>.journal`), a sequence of chunks, one per
 * poll. This version writes the flows as the wire encodes them (about 110 bytes a flow, against
 * 264 for the kernel's record), so the journal's writes, and the page cache and disk they take,
 * are those of the batch before compression:
 *
 * | bytes | field                                                        |
 * | ----- | ------------------------------------------------------------ |
 * | 4     | magic `FEJ2`                                                 |
 * | 4     | flows' byte length (u32, little endian)                      |
 * | 16    | boot ID the records were captured in                         |
 * | 4     | kernel ID of the ring buffer map (u32; 0: perf buffer)       |
 * | 4     | number of flows (u32)                                        |
 * | 8     | ring position after the records (u64)                        |
 * | 4     | wire schema version of the flows (u32)                       |
 * | n     | the flows, CBOR maps back to back (lib/wire.ts)              |
 *
 * Earlier versions wrote the kernel's records as they were; their chunks are still read:
 *
 * | bytes | field                                                        |
 * | ----- | ------------------------------------------------------------ |
 * | 4     | magic `FEJ1`                                                 |
 * | 4     | records' byte length (u32, little endian)                    |
 * | 16    | boot ID the records were captured in                         |
 * | 4     | kernel ID of the ring buffer map (u32; 0: perf buffer)       |
 * | 4     | record size (u32)                                            |
 * | 8     | ring position after the records (u64)                        |
 * | 8     | wall clock minus the kernel clock when read, ns (i64)        |
 * | n     | the records, as the kernel wrote them                        |
 *
 * A chunk cut short by a crash mid-write ends its file's replay; the ring still holds those
 * records, since they were not committed.
 *
 * @module
 */

import type { EncodedFlows } from "./encoded_flows.ts";
import { errorText } from "./error_text.ts";
import { SCHEMA_VERSION } from "./wire.ts";

/** Name of the journal's folder inside the spool directory. */
export const JOURNAL_DIR = "journal";

const MAGIC_FLOWS = 0x324a4546; // "FEJ2" read as a little-endian u32
const MAGIC_RECORDS = 0x314a4546; // "FEJ1"
const FLOWS_HEADER_BYTES = 44;
const RECORDS_HEADER_BYTES = 48;
const FILE = /^([0-9a-z]+)-(\d+)\.journal$/;

/** Where a chunk's records were read: the boot, the ring, and the ring position after them. */
export interface RingSpan {
  /** Boot ID (16 bytes) the records were captured in. */
  bootId: Uint8Array;
  /** Kernel ID of the ring buffer map they came from; 0 for the perf buffer. */
  ringId: number;
  /** Ring position after the records. */
  position: bigint;
}

/** Raw kernel records as one poll delivered them; in the journal, an earlier version's chunk. */
export interface RecordsChunk extends RingSpan {
  kind: "records";
  /** Wall clock minus the kernel clock at the time they were read, ns. */
  clockOffsetNs: bigint;
  /** Size of one record, bytes. */
  recordSize: number;
  /** Whole records. */
  records: Uint8Array;
}

/** One poll's flows, encoded for the wire: the chunk this version journals. */
export interface FlowsChunk extends RingSpan {
  kind: "flows";
  /** Wire schema version of the encoding. */
  schemaVersion: number;
  /** Number of flows. */
  count: number;
  /** The flows, CBOR maps back to back. */
  flows: Uint8Array;
}

/** A chunk read back from the journal. */
export type JournalChunk = RecordsChunk | FlowsChunk;

/** Raised for a journal folder that cannot be read or written. */
export class JournalError extends Error {
  override name = "JournalError";
}

/**
 * The journal of one run.
 *
 * @example
 * ```ts
 * import { CaptureJournal } from "./capture_journal.ts";
 * const journal = CaptureJournal.open("/var/lib/flowexporter/spool/journal");
 * for (const chunk of journal.left) {
 *   // ship the chunk's flows, then journal them again: journal.append(window, chunk, flows)
 * }
 * journal.dropLeft();
 * ```
 */
export class CaptureJournal implements Disposable {
  /** Chunks an earlier run journaled whose windows never reached the spool, oldest first. */
  readonly left: JournalChunk[];
  /** Chunks that ended in a torn write (their records are still in the ring). */
  readonly torn: number;
  readonly #dir: string;
  readonly #run: string;
  readonly #leftFiles: string[];
  #file: Deno.FsFile | undefined;
  #fileWindow = -1;
  readonly #header = new Uint8Array(FLOWS_HEADER_BYTES);

  private constructor(dir: string, left: JournalChunk[], leftFiles: string[], torn: number) {
    this.#dir = dir;
    this.left = left;
    this.#leftFiles = leftFiles;
    this.torn = torn;
    // The start time in base 36 sorts the runs; the random tail keeps two runs of one ms apart.
    const tail = crypto.getRandomValues(new Uint32Array(1))[0].toString(36).padStart(7, "0");
    this.#run = Date.now().toString(36).padStart(9, "0") + tail;
  }

  /**
   * Opens the journal folder (creating it) and reads what earlier runs left.
   *
   * @throws {JournalError} when the folder cannot be created or read
   */
  static open(dir: string): CaptureJournal {
    const left: JournalChunk[] = [];
    const files: string[] = [];
    let torn = 0;
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const names = [...Deno.readDirSync(dir)]
        .filter((e) => e.isFile && FILE.test(e.name))
        .map((e) => e.name)
        .sort(byRunThenWindow);
      for (const name of names) {
        const path = `${dir}/${name}`;
        files.push(path);
        const read = readChunks(Deno.readFileSync(path));
        left.push(...read.chunks);
        if (read.torn) torn++;
      }
    } catch (error) {
      throw new JournalError(
        `Cannot read the capture journal ${dir}: ${errorText(error)}`,
        {
          cause: error,
        },
      );
    }
    return new CaptureJournal(dir, left, files, torn);
  }

  /**
   * Appends one poll's flows to the journal of `window` (a window number of this run). Returns
   * once the bytes are in the file: they survive the process, not yet a power loss.
   *
   * @param span where the flows' records were read
   * @param flows the flows, encoded
   */
  append(window: number, span: RingSpan, flows: EncodedFlows): void {
    if (window !== this.#fileWindow) {
      this.#file?.close();
      this.#file = Deno.openSync(`${this.#dir}/${this.#run}-${window}.journal`, {
        append: true,
        create: true,
        mode: 0o600,
      });
      this.#fileWindow = window;
    }
    // The header, then the flows where they are: no copy of them.
    const header = this.#header;
    const view = new DataView(header.buffer);
    view.setUint32(0, MAGIC_FLOWS, true);
    view.setUint32(4, flows.bytes.length, true);
    header.set(span.bootId.subarray(0, 16), 8);
    view.setUint32(24, span.ringId, true);
    view.setUint32(28, flows.ends.length, true);
    view.setBigUint64(32, span.position, true);
    view.setUint32(40, SCHEMA_VERSION, true);
    writeAll(this.#file!, header);
    writeAll(this.#file!, flows.bytes);
  }

  /** Window `window` of this run is safe in the spool: its journal goes, with every earlier one. */
  sealed(window: number): void {
    for (const entry of Deno.readDirSync(this.#dir)) {
      const match = FILE.exec(entry.name);
      if (!match || match[1] !== this.#run || Number(match[2]) > window) continue;
      if (Number(match[2]) === this.#fileWindow) {
        this.#file?.close();
        this.#file = undefined;
        this.#fileWindow = -1;
      }
      Deno.removeSync(`${this.#dir}/${entry.name}`);
    }
  }

  /** Removes the earlier runs' files, once their chunks are journaled again by this run. */
  dropLeft(): void {
    for (const path of this.#leftFiles) Deno.removeSync(path);
    this.#leftFiles.length = 0;
  }

  /** Closes the open file; what it holds stays for the next start. Safe to call twice. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
    this.#fileWindow = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function byRunThenWindow(a: string, b: string): number {
  const [, runA, windowA] = FILE.exec(a)!;
  const [, runB, windowB] = FILE.exec(b)!;
  return runA === runB ? Number(windowA) - Number(windowB) : runA < runB ? -1 : 1;
}

/** The whole chunks of one file, and whether it ended in a torn one. */
export function readChunks(bytes: Uint8Array): { chunks: JournalChunk[]; torn: boolean } {
  const chunks: JournalChunk[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let at = 0;
  while (at < bytes.length) {
    const magic = at + 4 <= bytes.length ? view.getUint32(at, true) : 0;
    const headerBytes = magic === MAGIC_FLOWS
      ? FLOWS_HEADER_BYTES
      : magic === MAGIC_RECORDS
      ? RECORDS_HEADER_BYTES
      : 0;
    if (headerBytes === 0 || at + headerBytes > bytes.length) return { chunks, torn: true };
    const length = view.getUint32(at + 4, true);
    const end = at + headerBytes + length;
    if (end > bytes.length) return { chunks, torn: true };
    const span = {
      bootId: bytes.slice(at + 8, at + 24),
      ringId: view.getUint32(at + 24, true),
      position: view.getBigUint64(at + 32, true),
    };
    const body = bytes.subarray(at + headerBytes, end);
    if (magic === MAGIC_FLOWS) {
      chunks.push({
        kind: "flows",
        ...span,
        count: view.getUint32(at + 28, true),
        schemaVersion: view.getUint32(at + 40, true),
        flows: body,
      });
    } else {
      const recordSize = view.getUint32(at + 28, true);
      if (recordSize === 0 || length % recordSize !== 0) return { chunks, torn: true };
      chunks.push({
        kind: "records",
        ...span,
        recordSize,
        clockOffsetNs: view.getBigInt64(at + 40, true),
        records: body,
      });
    }
    at = end;
  }
  return { chunks, torn: false };
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
}
