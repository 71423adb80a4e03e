/**
 * The open window's compressed frames, on disk as they are made rather than in memory: what
 * keeps the agent's memory flat whatever the flow rate and the window length. One file per
 * window in the spool's `windows/` folder, `<run>-<window>.frames`, written without fsync: the
 * sealed batch is written durably from it (lib/spool.ts), and until then the capture journal
 * holds the window's records, so a file a crash leaves is of no use and the next run deletes
 * it.
 *
 * A frame the file cannot take (a full disk, an I/O error) is held in memory instead, with the
 * frames after it, so the window keeps every flow and its order; the seal then meets the same
 * condition with the spool's remedies (eviction of the oldest batches).
 *
 * @module
 */

import { errorText } from "./error_text.ts";
import type { BodyPart } from "./spool.ts";

/** Name of the window files' folder inside the spool directory. */
export const WINDOW_DIR = "windows";

const FILE = /^([0-9a-z]+)-(\d+)\.frames$/;

/** The frames of one window: a file, then what it could not take. */
export class WindowFile {
  /** The file's path. */
  readonly path: string;
  /** Frames the file could not take, in order, after its content. */
  readonly #held: Uint8Array[] = [];
  #file: Deno.FsFile | undefined;
  /** Bytes of whole frames in the file. */
  #bytes = 0;
  /** Why the file stopped taking frames, once it did. */
  #failure: string | undefined;

  /**
   * Creates the file of window `window` of run `run` (the folder too, when missing); a file
   * that cannot be created holds every frame in memory.
   */
  constructor(spoolDir: string, run: string, window: number) {
    const dir = `${spoolDir}/${WINDOW_DIR}`;
    this.path = `${dir}/${run}-${window}.frames`;
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      this.#file = Deno.openSync(this.path, {
        write: true,
        create: true,
        truncate: true,
        mode: 0o600,
      });
    } catch (error) {
      this.#failure = errorText(error);
    }
  }

  /** Why frames are held in memory, or undefined while the file takes them all. */
  get failure(): string | undefined {
    return this.#failure;
  }

  /** Bytes of frames held in memory. */
  get heldBytes(): number {
    return this.#held.reduce((n, frame) => n + frame.length, 0);
  }

  /**
   * Appends a frame, at once (the poll loop goes on when this returns); into memory once the
   * file failed.
   */
  append(frame: Uint8Array): void {
    if (this.#file) {
      try {
        for (let offset = 0; offset < frame.length;) {
          offset += this.#file.writeSync(frame.subarray(offset));
        }
        this.#bytes += frame.length;
        return;
      } catch (error) {
        // Part of the frame may be in the file, past #bytes: the seal copies only up to there.
        this.#failure = errorText(error);
        this.#close();
      }
    }
    this.#held.push(frame);
  }

  /**
   * Closes the file for writing.
   *
   * @returns the window's frames, in order, as parts of a batch body for the spool
   */
  seal(): BodyPart[] {
    this.#close();
    return this.#bytes > 0
      ? [{ path: this.path, bytes: this.#bytes }, ...this.#held]
      : [...this.#held];
  }

  /** Deletes the file (after the batch is spooled, or lost). Safe to call twice. */
  async remove(): Promise<void> {
    this.#close();
    await Deno.remove(this.path).catch(() => {});
  }

  #close(): void {
    const file = this.#file;
    this.#file = undefined;
    file?.close();
  }
}

/**
 * Deletes the window files of every run but `run` in `spoolDir`: an earlier run's files are of
 * no use (its journal replays their flows). Other files there are left alone.
 */
export async function removeOtherRuns(spoolDir: string, run: string): Promise<void> {
  const dir = `${spoolDir}/${WINDOW_DIR}`;
  try {
    for await (const item of Deno.readDir(dir)) {
      const match = FILE.exec(item.name);
      if (item.isFile && match && match[1] !== run) {
        await Deno.remove(`${dir}/${item.name}`).catch(() => {});
      }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
