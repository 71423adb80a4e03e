/**
 * One agent per host: an exclusive `flock(2)` on a lock file, taken before the BPF side is
 * loaded, so a second agent refuses to start instead of taking over the pinned maps.
 *
 * Why flock: the kernel drops the lock when the process exits, however it exits (SIGKILL,
 * OOM kill, crash), so there is no stale lock to clean up, and a lock file left by a dead
 * agent blocks nobody. The file also holds the owner's pid, for the error message only; it is
 * never deleted (deleting a flock file lets two processes lock two different inodes).
 * `Deno.FsFile.tryLockSync` is flock on Linux and does not block.
 *
 * Containers: the lock only works between agents that see the same file, so a DaemonSet mounts
 * the lock file's directory from the host (see docs/operations.md).
 *
 * @example
 * ```ts
 * import { acquireInstanceLock } from "./instance_lock.ts";
 * using lock = acquireInstanceLock("/run/flowexporter.lock");
 * // load the BPF side, run; the lock goes with the process
 * ```
 *
 * @module
 */

import { errorText } from "../lib/error_text.ts";

/** Raised when another agent holds the lock, or the lock file cannot be opened. */
export class InstanceLockError extends Error {
  override name = "InstanceLockError";
  /** The pid written by the holder, when another agent holds the lock. */
  readonly holderPid?: number;

  /** See the class description. */
  constructor(message: string, holderPid?: number, options?: ErrorOptions) {
    super(message, options);
    this.holderPid = holderPid;
  }
}

/** The held lock; release it by closing (or by exiting). */
export interface InstanceLock extends Disposable {
  /** The lock file. */
  readonly path: string;
  /** Releases the lock; safe to call twice. */
  close(): void;
}

const encoder = new TextEncoder();

/**
 * Takes the host-wide lock, or fails at once: it never waits.
 *
 * @param path the lock file; created (mode 0644) when missing, its directory must exist
 * @returns the held lock
 * @throws {InstanceLockError} `Another flowexporter (pid 1234) is running: lock <path> is held
 *   (stop it first)`, or why the file cannot be opened
 */
export function acquireInstanceLock(path: string): InstanceLock {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o644 });
  } catch (error) {
    throw new InstanceLockError(
      `Cannot open lock file ${path}: ${openProblem(error)} (set --lock-file to a writable path)`,
      undefined,
      { cause: error },
    );
  }
  let locked: boolean;
  try {
    locked = file.tryLockSync(true);
  } catch (error) {
    file.close();
    throw new InstanceLockError(
      `Cannot lock ${path}: ${errorText(error)} (put --lock-file on a local file system)`,
      undefined,
      { cause: error },
    );
  }
  if (!locked) {
    const pid = readPid(file);
    file.close();
    throw new InstanceLockError(
      `Another flowexporter${
        pid === undefined ? "" : ` (pid ${pid})`
      } is running: lock ${path} is held (stop it first)`,
      pid,
    );
  }
  // A stale pid from an agent that died is simply overwritten.
  file.truncateSync(0);
  const bytes = encoder.encode(`${Deno.pid}\n`);
  for (let off = 0; off < bytes.length;) off += file.writeSync(bytes.subarray(off));
  let open = true;
  const close = () => {
    if (!open) return;
    open = false;
    file.close(); // closing the last descriptor releases the flock
  };
  return { path, close, [Symbol.dispose]: close };
}

/** Who holds the lock, without taking it for longer than a check; for `flowexporter doctor`. */
export type LockState =
  | { held: false }
  | { held: true; pid?: number };

/**
 * Tells whether an agent holds the lock at `path`. It takes and at once drops the lock when
 * free, and never creates or writes the file.
 *
 * @throws {Deno.errors.PermissionDenied} and other open errors than NotFound
 */
export function inspectInstanceLock(path: string): LockState {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { held: false };
    throw error;
  }
  try {
    if (file.tryLockSync(true)) return { held: false };
    return { held: true, pid: readPid(file) };
  } finally {
    file.close();
  }
}

function readPid(file: Deno.FsFile): number | undefined {
  const buf = new Uint8Array(32);
  file.seekSync(0, Deno.SeekMode.Start);
  const n = file.readSync(buf) ?? 0;
  const text = new TextDecoder().decode(buf.subarray(0, n)).trim();
  return /^\d+$/.test(text) ? Number(text) : undefined;
}

function openProblem(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "its directory does not exist";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  return errorText(error);
}
