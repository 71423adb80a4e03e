/**
 * Test helper: a small tmpfs of its own, to fill a file system for real. Mounting needs root
 * (and the mount capability); {@linkcode CAN_MOUNT_TMPFS} says whether this run has them, so
 * that a test can be ignored elsewhere.
 *
 * @module
 */
import { run } from "./_run.ts";

/** True when this process can mount a tmpfs (checked once, by mounting one). */
export const CAN_MOUNT_TMPFS: boolean = await probe();

/**
 * Mounts a tmpfs of `bytes` on a new temporary directory, runs `fn` on it, and unmounts it on
 * every path out.
 */
export async function withTinyFs(bytes: number, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tiny_fs_" });
  try {
    await mount(dir, bytes);
    try {
      await fn(dir);
    } finally {
      await run("umount", dir);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Like {@linkcode withTinyFs}, but the file system is mounted read-only once `prepare` has put
 * what it wants on it: even root cannot write there (EROFS).
 */
export async function withReadOnlyFs(
  prepare: (dir: string) => Promise<void>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  await withTinyFs(1024 * 1024, async (dir) => {
    await prepare(dir);
    await run("mount", "-o", "remount,ro", dir);
    await fn(dir);
  });
}

/**
 * Writes a file of zeros until the file system is full, then shortens it by `leave` bytes.
 *
 * @returns the file's path
 */
export async function fillUp(dir: string, leave: number): Promise<string> {
  const path = `${dir}/filler`;
  using file = await Deno.open(path, { write: true, create: true });
  const block = new Uint8Array(64 * 1024);
  let size = 0;
  try {
    for (;;) size += await file.write(block);
  } catch (error) {
    if ((error as { code?: string }).code !== "ENOSPC") throw error;
  }
  await file.truncate(Math.max(0, size - leave));
  return path;
}

async function mount(dir: string, bytes: number): Promise<void> {
  await run("mount", "-t", "tmpfs", "-o", `size=${bytes},mode=0700`, "tmpfs", dir);
}

async function probe(): Promise<boolean> {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  const dir = await Deno.makeTempDir({ prefix: "tiny_fs_probe_" });
  try {
    await mount(dir, 64 * 1024);
    await run("umount", dir);
    return true;
  } catch {
    return false;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
