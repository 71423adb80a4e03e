/**
 * The spool: closed batches on disk until the collector has them. A batch is durable before
 * anyone tries to send it, and is deleted only after delivery.
 *
 * Layout of the spool directory:
 * - `batch-<sequence, 16 digits>.cbor.zst` (or `.cbor.gz`): a batch waiting to be sent, its body
 *   compressed with the coding the suffix names (lib/body_coding.ts);
 * - `state.json`: the next sequence number and the evictions not yet reported in a batch;
 * - `rejected/`: batches the collector refused for good (HTTP 4xx), kept for inspection;
 * - `corrupt/`: files that could not be read back, and leftovers of interrupted writes.
 *
 * Files are written to a temporary name, fsynced, renamed into place, and the directory is
 * fsynced. The byte cap covers all of it; when a write goes over, the oldest set-aside files
 * go first, then the oldest unsent batches (counted as evictions). A file system that fills up
 * before the cap is reached is handled alike: the write evicts, oldest first, until the batch
 * fits. A batch of flows that cannot be written at all (nothing left to evict, a write error)
 * is counted too: the next batch written reports it with the evictions, so the loss always
 * reaches the collector. Evictions are logged once per incident, not once per batch.
 *
 * @module
 */

import { JOURNAL_DIR } from "./capture_journal.ts";
import { BODY_CODINGS, type BodyCoding, hasMagic } from "./body_coding.ts";
import { type Logger, silentLogger } from "./logger.ts";
import { decodeBatch, MAX_BATCH_BYTES } from "./wire.ts";
import type { BatchHeader } from "./wire.ts";
import { errorText } from "./error_text.ts";

/** Options of {@linkcode Spool.open}. */
export interface SpoolOptions {
  /** Spool directory; created (mode 0700) when missing. */
  dir: string;
  /** Cap on the bytes the spool keeps on disk. */
  maxBytes?: number;
  /** Where to report evictions and corrupt files. */
  logger?: Logger;
  /** Wall clock, ms since the epoch (injected for tests). */
  now?: () => number;
}

/** A batch in the spool, waiting to be sent. */
export interface SpoolEntry {
  /** The batch sequence number. */
  readonly sequence: number;
  /** The file holding the compressed batch body. */
  readonly path: string;
  /** How the body is compressed (the file's suffix says so too). */
  readonly coding: BodyCoding;
  /** Size of the file, bytes. */
  readonly bytes: number;
  /** When the batch was spooled, ms since the epoch. */
  readonly createdMs: number;
  /** The batch header, once known: written by this process, or read back by `read`. */
  header?: BatchHeader;
}

/** Figures for metrics. */
export interface SpoolStats {
  /** Bytes on disk: unsent batches plus set-aside files. */
  bytes: number;
  /** Unsent batches. */
  files: number;
  /** Age of the oldest unsent batch, ms; 0 when there is none. */
  oldestAgeMs: number;
  /** Unsent batches deleted to respect the cap, or for room on a full disk, since open. */
  evictions: number;
  /** Batches of flows that could not be written (their loss is reported like evictions). */
  lost: number;
  /** Files set aside in `rejected/` and `corrupt/`. */
  asideFiles: number;
}

/** Default spool cap: 256 MiB. */
export const DEFAULT_SPOOL_BYTES = 256 * 1024 * 1024;

const BATCH_FILE = new RegExp(
  `^batch-(\\d{16})\\.cbor\\.(${
    Object.values(BODY_CODINGS).map((coding) => coding.fileSuffix).join("|")
  })$`,
);

/**
 * The coding of a spooled batch file, from its name.
 *
 * @param path a batch file's path or name
 * @returns undefined for a file that is not a spooled batch
 */
export function spoolFileCoding(path: string): BodyCoding | undefined {
  const suffix = BATCH_FILE.exec(path.slice(path.lastIndexOf("/") + 1))?.[2];
  return (Object.keys(BODY_CODINGS) as BodyCoding[]).find((coding) =>
    BODY_CODINGS[coding].fileSuffix === suffix
  );
}
const STATE_FILE = "state.json";
const REJECTED = "rejected";
const CORRUPT = "corrupt";
const STATE_VERSION = 1;

interface AsideFile {
  path: string;
  bytes: number;
  mtimeMs: number;
}

/**
 * A durable queue of compressed batches, oldest first. Every operation that touches the disk is
 * serialized.
 *
 * @example
 * ```ts
 * import { Spool } from "./spool.ts";
 * const spool = await Spool.open({ dir: "/var/lib/flowexporter/spool" });
 * for (const entry of spool.pending()) console.log(entry.sequence);
 * ```
 */
export class Spool {
  readonly #dir: string;
  readonly #maxBytes: number;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #pending: SpoolEntry[] = [];
  readonly #aside: AsideFile[] = [];
  readonly #leased = new Set<SpoolEntry>();
  readonly #verified = new Set<SpoolEntry>();
  #nextSequence = 0;
  #unreportedEvictions = 0;
  #evictions = 0;
  #lost = 0;
  /** The eviction incident under way: its cause and what it evicted so far. */
  #incident: { cause: string; batches: number; bytes: number } | undefined;
  #lock: Promise<unknown> = Promise.resolve();

  private constructor(options: SpoolOptions) {
    this.#dir = options.dir;
    this.#maxBytes = options.maxBytes ?? DEFAULT_SPOOL_BYTES;
    this.#log = options.logger ?? silentLogger;
    this.#now = options.now ?? Date.now;
    if (!Number.isInteger(this.#maxBytes) || this.#maxBytes < 1) {
      throw new RangeError(
        `Invalid spool cap ${this.#maxBytes}: use a whole number of bytes of at least 1`,
      );
    }
  }

  /**
   * Opens (or creates) a spool directory: lists unsent batches, sets corrupt and partial files
   * aside, and derives the next sequence number from the state file and the batch files. A
   * spool without a readable state file starts at the current time in ms, so sequence numbers
   * still increase when the state was lost.
   *
   * @param options directory, cap, logger and clock
   * @returns the open spool
   * @throws when the directory cannot be created or listed
   */
  static async open(options: SpoolOptions): Promise<Spool> {
    const spool = new Spool(options);
    await spool.#load();
    return spool;
  }

  /** The sequence number the next batch must carry. */
  get nextSequence(): number {
    return this.#nextSequence;
  }

  /** Evictions not yet reported in a spooled batch (survives restarts). */
  get unreportedEvictions(): number {
    return this.#unreportedEvictions;
  }

  /** Unsent batches, oldest first. */
  pending(): SpoolEntry[] {
    return [...this.#pending];
  }

  /** The oldest unsent batch, if any. */
  oldest(): SpoolEntry | undefined {
    return this.#pending[0];
  }

  /** Figures for metrics. */
  stats(): SpoolStats {
    const oldest = this.#pending[0];
    return {
      bytes: this.#totalBytes(),
      files: this.#pending.length,
      oldestAgeMs: oldest ? Math.max(0, this.#now() - oldest.createdMs) : 0,
      evictions: this.#evictions,
      lost: this.#lost,
      asideFiles: this.#aside.length,
    };
  }

  /**
   * Writes a batch durably, then records in the state file that its sequence number is used
   * and that its `loss.spoolEvictions` are reported; evicts old batches if over the cap. When
   * the file system is full, evicts the oldest set-aside files, then the oldest unsent batches
   * (not one being sent), until the batch fits.
   *
   * @param header the batch header; `sequence` must be at least {@linkcode nextSequence}
   * @param body the compressed batch body, in parts (written one after the other)
   * @param coding how `body` is compressed
   * @returns the new entry
   * @throws when the write fails (nothing left to evict on a full disk, another error): the
   *   batch is not in the spool, and, when it holds flows, is counted for the next batch to
   *   report; or when the sequence number is stale
   */
  write(
    header: BatchHeader,
    body: readonly Uint8Array[],
    coding: BodyCoding,
  ): Promise<SpoolEntry> {
    return this.#serial(async () => {
      if (header.sequence < this.#nextSequence) {
        throw new RangeError(
          `Cannot spool batch ${header.sequence}: sequence numbers already went up to ${
            this.#nextSequence - 1
          }`,
        );
      }
      const path = this.#batchPath(header.sequence, coding);
      const evictedBefore = this.#evictions;
      try {
        await this.#writeWithRoom(path, body);
      } catch (error) {
        if (header.recordCount > 0) {
          this.#lost++;
          this.#unreportedEvictions++;
          await this.#saveState().catch(() => {}); // kept in memory when even this fails
        }
        throw new Error(
          isNoSpace(error)
            ? `the spool's file system is full (${
              errorText(error)
            }) and no unsent batch is left to evict`
            : errorText(error),
          { cause: error },
        );
      }
      const entry: SpoolEntry = {
        sequence: header.sequence,
        path,
        coding,
        bytes: body.reduce((n, part) => n + part.length, 0),
        createdMs: this.#now(),
        header,
      };
      this.#pending.push(entry);
      this.#verified.add(entry);
      this.#nextSequence = header.sequence + 1;
      this.#unreportedEvictions = Math.max(
        0,
        this.#unreportedEvictions - header.loss.spoolEvictions,
      );
      await this.#enforceCap(entry);
      if (this.#evictions === evictedBefore) this.#endIncident();
      try {
        await this.#saveState(entry);
      } catch (error) {
        // The batch is safe; the next start derives the sequence from the batch files.
        this.#log(
          "warn",
          `Cannot update ${this.#dir}/${STATE_FILE}: ${
            errorText(error)
          } (the evictions not yet reported may be forgotten by a restart)`,
        );
      }
      return entry;
    });
  }

  /**
   * Leases a batch for sending: a leased batch is never evicted, and its file (`entry.path`) is
   * what is sent. A batch from an earlier run is checked first (checksum, schema, sequence); a
   * bad one is moved to `corrupt/` with a log line.
   *
   * @param entry a pending entry
   * @returns false when the file is gone or was set aside
   */
  lease(entry: SpoolEntry): Promise<boolean> {
    return this.#serial(async () => {
      if (!this.#pending.includes(entry)) return false;
      const verified = this.#verified.has(entry);
      let body: Uint8Array | undefined;
      try {
        if (verified) await Deno.stat(entry.path);
        else body = await Deno.readFile(entry.path);
      } catch (error) {
        this.#log("warn", `Cannot read spooled batch ${entry.path}: ${errorText(error)} (skipped)`);
        this.#drop(entry);
        return false;
      }
      if (body) {
        try {
          // node:zlib (and Node's compatibility layer) loads here, for an earlier run's batches.
          const { decompress } = await import("./compression.ts");
          const { header } = decodeBatch(await decompress(body, entry.coding, MAX_BATCH_BYTES));
          if (header.sequence !== entry.sequence) {
            throw new Error(`it holds batch ${header.sequence}`);
          }
          entry.header = header;
          this.#verified.add(entry);
        } catch (error) {
          await this.#setAside(entry.path, CORRUPT, `is corrupt: ${errorText(error)}`);
          this.#drop(entry);
          return false;
        }
      }
      this.#leased.add(entry);
      return true;
    });
  }

  /**
   * Deletes a delivered batch.
   *
   * @param entry the entry `read` returned the body of
   */
  remove(entry: SpoolEntry): Promise<void> {
    return this.#serial(async () => {
      this.#drop(entry);
      await Deno.remove(entry.path).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
    });
  }

  /**
   * Moves a batch the collector refused for good to `rejected/`.
   *
   * @param entry the refused batch
   * @returns the new path of the file
   */
  reject(entry: SpoolEntry): Promise<string> {
    return this.#serial(async () => {
      this.#drop(entry);
      return await this.#moveAside(entry.path, REJECTED);
    });
  }

  /**
   * Ends the lease of a batch that could not be sent yet; it may be evicted again.
   *
   * @param entry the entry `read` returned the body of
   */
  release(entry: SpoolEntry): void {
    this.#leased.delete(entry);
  }

  #serial<T>(task: () => Promise<T>): Promise<T> {
    const result = this.#lock.then(task);
    this.#lock = result.catch(() => {});
    return result;
  }

  #batchPath(sequence: number, coding: BodyCoding): string {
    const suffix = BODY_CODINGS[coding].fileSuffix;
    return `${this.#dir}/batch-${String(sequence).padStart(16, "0")}.cbor.${suffix}`;
  }

  #totalBytes(): number {
    let bytes = 0;
    for (const entry of this.#pending) bytes += entry.bytes;
    for (const file of this.#aside) bytes += file.bytes;
    return bytes;
  }

  #drop(entry: SpoolEntry): void {
    const i = this.#pending.indexOf(entry);
    if (i >= 0) this.#pending.splice(i, 1);
    this.#leased.delete(entry);
    this.#verified.delete(entry);
  }

  async #load(): Promise<void> {
    await Deno.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await Deno.mkdir(`${this.#dir}/${REJECTED}`, { recursive: true, mode: 0o700 });
    await Deno.mkdir(`${this.#dir}/${CORRUPT}`, { recursive: true, mode: 0o700 });
    for (const sub of [REJECTED, CORRUPT]) {
      for await (const item of Deno.readDir(`${this.#dir}/${sub}`)) {
        if (!item.isFile) continue;
        const path = `${this.#dir}/${sub}/${item.name}`;
        const info = await Deno.stat(path);
        this.#aside.push({ path, bytes: info.size, mtimeMs: info.mtime?.getTime() ?? 0 });
      }
    }
    this.#aside.sort((a, b) => a.mtimeMs - b.mtimeMs);
    const state = await this.#loadState();
    let lastSequence = -1;
    for await (const item of Deno.readDir(this.#dir)) {
      const path = `${this.#dir}/${item.name}`;
      if (
        item.name === STATE_FILE ||
        (item.isDirectory && [REJECTED, CORRUPT, JOURNAL_DIR].includes(item.name))
      ) {
        continue;
      }
      const match = BATCH_FILE.exec(item.name);
      if (!item.isFile || !match) {
        const what = item.name.startsWith(".tmp-") ? "is a partial write" : "is not a batch";
        await this.#setAside(path, CORRUPT, what);
        continue;
      }
      const info = await Deno.stat(path);
      const coding = spoolFileCoding(item.name)!;
      if (!(await startsWithMagic(path, coding))) {
        await this.#setAside(path, CORRUPT, `is corrupt: not ${coding} data (${info.size} bytes)`);
        continue;
      }
      const sequence = Number(match[1]);
      lastSequence = Math.max(lastSequence, sequence);
      this.#pending.push({
        sequence,
        path,
        coding,
        bytes: info.size,
        createdMs: info.mtime?.getTime() ?? this.#now(),
      });
    }
    this.#pending.sort((a, b) => a.sequence - b.sequence);
    this.#nextSequence = Math.max(state?.nextSequence ?? Math.floor(this.#now()), lastSequence + 1);
    this.#unreportedEvictions = state?.unreportedEvictions ?? 0;
    if (this.#pending.length > 0) {
      this.#log(
        "info",
        `Spool ${this.#dir}: ${this.#pending.length} unsent batches (${
          this.#pending[0].sequence
        } to ${lastSequence}) to replay`,
      );
    }
    await this.#enforceCap();
    await this.#saveState();
  }

  async #loadState(): Promise<{ nextSequence: number; unreportedEvictions: number } | undefined> {
    const path = `${this.#dir}/${STATE_FILE}`;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return undefined;
      throw error;
    }
    try {
      const state = JSON.parse(text);
      const valid = state?.version === STATE_VERSION && Number.isSafeInteger(state.nextSequence) &&
        state.nextSequence >= 0 && Number.isSafeInteger(state.unreportedEvictions) &&
        state.unreportedEvictions >= 0;
      if (!valid) throw new Error("unexpected content");
      return state;
    } catch (error) {
      await this.#setAside(path, CORRUPT, `is corrupt: ${errorText(error)}`);
      return undefined;
    }
  }

  /** Writes the state file, making room on a full disk (but never by evicting `keep`). */
  #saveState(keep?: SpoolEntry): Promise<void> {
    const state = {
      version: STATE_VERSION,
      nextSequence: this.#nextSequence,
      unreportedEvictions: this.#unreportedEvictions,
    };
    const bytes = new TextEncoder().encode(JSON.stringify(state) + "\n");
    return this.#writeWithRoom(`${this.#dir}/${STATE_FILE}`, [bytes], keep);
  }

  /**
   * Writes a file durably; when the file system is full, evicts the oldest set-aside file or
   * unsent batch (not `keep`, not one being sent) and tries again, until it fits or nothing is
   * left to evict.
   */
  async #writeWithRoom(
    path: string,
    parts: readonly Uint8Array[],
    keep?: SpoolEntry,
  ): Promise<void> {
    for (;;) {
      try {
        return await writeDurably(this.#dir, path, parts);
      } catch (error) {
        const cause = `has no room left on its file system (${errorText(error)})`;
        if (!isNoSpace(error) || !await this.#evictOldest(cause, keep)) throw error;
      }
    }
  }

  /** Deletes set-aside files, then unsent batches (oldest first), until under the cap. */
  async #enforceCap(keep?: SpoolEntry): Promise<void> {
    while (this.#totalBytes() > this.#maxBytes) {
      if (!await this.#evictOldest(`over its ${this.#maxBytes}-byte cap`, keep)) return;
    }
  }

  /**
   * Deletes the oldest set-aside file or, when there is none, the oldest unsent batch that is
   * neither being sent nor `keep`; the first eviction of an incident is logged.
   *
   * @returns false when nothing could be deleted
   */
  async #evictOldest(cause: string, keep?: SpoolEntry): Promise<boolean> {
    const aside = this.#aside.shift();
    if (aside) {
      await Deno.remove(aside.path).catch(() => {});
      this.#log("info", `Spool ${this.#dir} ${cause}: deleted set-aside file ${aside.path}`);
      return true;
    }
    const victim = this.#pending.find((e) => e !== keep && !this.#leased.has(e));
    if (!victim) return false;
    await Deno.remove(victim.path).catch(() => {});
    this.#drop(victim);
    this.#evictions++;
    this.#unreportedEvictions++;
    if (this.#incident === undefined) {
      this.#incident = { cause, batches: 0, bytes: 0 };
      this.#log(
        "warn",
        `Spool ${this.#dir} ${cause}: evicting the oldest unsent batches, from batch ${victim.sequence} (${victim.bytes} bytes); the next batches report them in spool_evictions, and a line follows when this ends`,
      );
    }
    this.#incident.batches++;
    this.#incident.bytes += victim.bytes;
    return true;
  }

  /** A write needed no eviction: logs the end of an eviction incident, if one was under way. */
  #endIncident(): void {
    const incident = this.#incident;
    if (incident === undefined) return;
    this.#incident = undefined;
    this.#log(
      "warn",
      `Spool ${this.#dir} no longer evicting: ${incident.batches} unsent batches (${incident.bytes} bytes) were evicted (${incident.cause}), reported in spool_evictions`,
    );
  }

  async #setAside(path: string, sub: string, why: string): Promise<void> {
    try {
      const moved = await this.#moveAside(path, sub);
      this.#log("warn", `Spool file ${path} ${why}: moved to ${moved}`);
    } catch (error) {
      this.#log(
        "warn",
        `Spool file ${path} ${why}, and cannot be moved aside: ${errorText(error)}`,
      );
    }
  }

  async #moveAside(path: string, sub: string): Promise<string> {
    const name = path.slice(path.lastIndexOf("/") + 1);
    const target = `${this.#dir}/${sub}/${name}`;
    await Deno.rename(path, target);
    const info = await Deno.stat(target);
    const replaced = this.#aside.findIndex((file) => file.path === target);
    if (replaced >= 0) this.#aside.splice(replaced, 1);
    this.#aside.push({ path: target, bytes: info.size, mtimeMs: this.#now() });
    return target;
  }
}

/** True for a write that failed for want of space: a full file system, or a quota. */
function isNoSpace(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === "ENOSPC" || code === "EDQUOT";
}

/** Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one. */
async function writeDurably(
  dir: string,
  path: string,
  parts: readonly Uint8Array[],
): Promise<void> {
  const temp = `${dir}/.tmp-${path.slice(path.lastIndexOf("/") + 1)}`;
  const file = await Deno.open(temp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    for (const bytes of parts) {
      for (let offset = 0; offset < bytes.length;) {
        offset += await file.write(bytes.subarray(offset));
      }
    }
    await file.sync();
  } catch (error) {
    file.close();
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
  file.close();
  await Deno.rename(temp, path);
  const directory = await Deno.open(dir, { read: true });
  try {
    await directory.sync();
  } finally {
    directory.close();
  }
}

async function startsWithMagic(path: string, coding: BodyCoding): Promise<boolean> {
  using file = await Deno.open(path, { read: true });
  const head = new Uint8Array(BODY_CODINGS[coding].magic.length);
  const n = await file.read(head);
  return n === head.length && hasMagic(head, coding);
}
