/**
 * `flowexporter detach`: stops capturing for good. A stopped agent leaves its BPF programs
 * attached and its maps and ring buffer pinned, so that the next start (a restart, an upgrade)
 * loses nothing; this ends that, for an uninstall or a host that should stop recording.
 *
 * @module
 */
import { basename, dirname } from "node:path";
import { detachCapture } from "../ffi/agent.ts";
import { type Config, OPTIONS_HELP } from "./config.ts";
import { inspectInstanceLock } from "./instance_lock.ts";

/** `flowexporter detach --help`. */
export const DETACH_HELP = `Usage: flowexporter detach [options]

Ends the capture a stopped agent left running: unpins its programs' links, its
maps and its ring buffer under pin_dir (the kernel then detaches the programs
and frees the memory), and removes the pinned identity maps with them. A
versioned pin_dir (the default ends in /v1) takes its parent folder along once
no other version is left in it. Records still waiting in the ring buffer are
lost: start and stop the agent first to collect them. Refuses while an agent
holds the lock file.

${OPTIONS_HELP}`;

/** Detaches; returns the exit code (1 while an agent runs). */
export function detach(v: Config, print: (line: string) => void = console.error): number {
  const lock = inspectInstanceLock(v.lockFile);
  if (lock.held) {
    print(
      `flowexporter: Cannot detach while an agent runs${
        lock.pid ? ` (pid ${lock.pid})` : ""
      }: stop it first`,
    );
    return 1;
  }
  const removed = detachCapture(v.pinDir);
  try {
    Deno.removeSync(v.pinDir, { recursive: true });
    removed.push(v.pinDir); // with the identity maps
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const pinRoot = removeEmptyPinRoot(v.pinDir);
  if (pinRoot) removed.push(pinRoot);
  print(
    removed.length
      ? `flowexporter: detached (removed ${removed.join(", ")})`
      : `flowexporter: nothing attached under ${v.pinDir}`,
  );
  return 0;
}

/**
 * The folder above a versioned pin directory (`/sys/fs/bpf/flowexporter` above the default
 * `…/v1`): the agent created it for the versions' pin directories, so it goes with the last of
 * them. It stays while another version's directory is in it, and when it is a mount point.
 *
 * @returns the folder when it was removed
 */
function removeEmptyPinRoot(pinDir: string): string | undefined {
  if (!/^v\d+$/.test(basename(pinDir))) return undefined;
  const root = dirname(pinDir);
  try {
    Deno.removeSync(root);
    return root;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (error instanceof Deno.errors.NotFound || code === "ENOTEMPTY" || code === "EBUSY") {
      return undefined;
    }
    throw error;
  }
}
