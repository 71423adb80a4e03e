/**
 * What the benchmark reads about a tracer process from /proc: CPU time of
 * the whole process (every thread), peak RSS, thread count.
 *
 * @module
 */

/** Clock ticks per second of /proc/PID/stat (USER_HZ). */
export async function clockTicksPerSecond(): Promise<number> {
  try {
    const out = await new Deno.Command("getconf", { args: ["CLK_TCK"], stderr: "null" }).output();
    const hz = Number(new TextDecoder().decode(out.stdout).trim());
    if (out.success && Number.isSafeInteger(hz) && hz > 0) return hz;
  } catch {
    // getconf missing: USER_HZ is 100 on every Linux architecture the agent supports.
  }
  return 100;
}

/**
 * utime + stime of a process in clock ticks: all its threads, live and exited
 * (the kernel folds an exited thread's time into the process).
 */
export function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // comm (field 2) may hold spaces and parentheses: fields resume after the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // fields 14 and 15 of proc(5)
}

/** Peak resident set size (VmHWM) of a process, KiB. */
export function peakRssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  if (!m) {
    throw new Error(`Cannot read VmHWM of process ${pid}: no such line in /proc/${pid}/status`);
  }
  return Number(m[1]);
}

/** Number of threads of a process. */
export function threadCount(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].length;
}

/** Realpath of a process's executable. */
export function executable(pid: number): string {
  return Deno.realPathSync(`/proc/${pid}/exe`);
}

/** Open file descriptors of a process whose link target contains `kind` (e.g. "perf_event"). */
export function countFds(pid: number, kind: string): number {
  let n = 0;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`).includes(kind)) n++;
    } catch {
      // The descriptor closed while we listed it.
    }
  }
  return n;
}

/**
 * Waits until a process has used at most one clock tick over `quietMs`: the
 * tracer has worked off what the churn left in its buffers. Gives up after `maxMs`.
 */
export async function waitUntilIdle(pid: number, quietMs = 400, maxMs = 20_000): Promise<void> {
  const deadline = Date.now() + maxMs;
  let last = cpuTicks(pid);
  while (Date.now() < deadline) {
    await delay(quietMs);
    const now = cpuTicks(pid);
    if (now - last <= 1) return;
    last = now;
  }
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
