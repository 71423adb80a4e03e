/**
 * `flowexporter detach`: stops capturing for good. A stopped agent leaves its BPF programs
 * attached and its maps and ring buffer pinned, so that the next start (a restart, an upgrade)
 * loses nothing; this ends that, for an uninstall or a host that should stop recording.
 *
 * @module
 */
import { detachCapture } from "../ffi/agent.ts";
import { type Config, OPTIONS_HELP } from "./config.ts";
import { inspectInstanceLock } from "./instance_lock.ts";

/** `flowexporter detach --help`. */
export const DETACH_HELP = `Usage: flowexporter detach [options]

Ends the capture a stopped agent left running: unpins its programs' links, its
maps and its ring buffer under pin_dir (the kernel then detaches the programs
and frees the memory), and removes the pinned identity maps with them. Records
still waiting in the ring buffer are lost: start and stop the agent first to
collect them. Refuses while an agent holds the lock file.

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
  let identityMaps = false;
  try {
    Deno.removeSync(v.pinDir, { recursive: true });
    identityMaps = true;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  print(
    removed.length || identityMaps
      ? `flowexporter: detached (removed ${
        [...removed, ...(identityMaps ? [v.pinDir] : [])].join(", ")
      })`
      : `flowexporter: nothing attached under ${v.pinDir}`,
  );
  return 0;
}
