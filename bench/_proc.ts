/**
 * What the benchmark reads about a tracer process from /proc: CPU time of
 * the whole process (every thread), peak RSS, thread count, its BPF programs'
 * run time; and the busy loop
 * (`--hog`) that keeps one CPU occupied during a measurement.
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

/**
 * Bytes a process has handed to write(2) and its kin, to files, pipes and sockets alike
 * (`wchar` of /proc/PID/io): what its disk writes can be at most.
 */
export function writtenBytes(pid: number): number {
  return Number(/^wchar: (\d+)$/m.exec(Deno.readTextFileSync(`/proc/${pid}/io`))?.[1]);
}

/** Peak resident set size (VmHWM) of a process, KiB. */
export function peakRssKiB(pid: number): number {
  return statusKiB(pid, "VmHWM");
}

/** Resident set size now (VmRSS) of a process, KiB. */
export function rssKiB(pid: number): number {
  return statusKiB(pid, "VmRSS");
}

function statusKiB(pid: number, field: "VmHWM" | "VmRSS"): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!m) {
    throw new Error(`Cannot read ${field} of process ${pid}: no such line in /proc/${pid}/status`);
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

/** What the kernel counted for one BPF program while `kernel.bpf_stats_enabled` was 1. */
export interface BpfProgramStats {
  /** The program's name (its function name in the BPF object). */
  name: string;
  /** Times it ran. */
  runs: number;
  /** Time it ran, ns. */
  runTimeNs: number;
}

/**
 * The BPF programs a process holds (each once, however many descriptors refer to it), by
 * program ID, with the run counts and times the kernel keeps while `kernel.bpf_stats_enabled` is
 * 1 (read from each descriptor's fdinfo; names from `bpftool`). The programs run in the context
 * of whatever triggers them, so this time is not the process's CPU.
 */
export function bpfProgramStats(pid: number): Map<number, BpfProgramStats> {
  const counted = new Map<number, { runs: number; runTimeNs: number }>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    let info: string;
    try {
      if (!Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`).includes("bpf-prog")) continue;
      info = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${entry.name}`);
    } catch {
      continue; // the descriptor closed while we listed it
    }
    const field = (name: string) => new RegExp(`^${name}:\\s+(\\d+)$`, "m").exec(info)?.[1];
    const id = field("prog_id");
    const ns = field("run_time_ns");
    if (id !== undefined && ns !== undefined) {
      counted.set(Number(id), { runs: Number(field("run_cnt") ?? 0), runTimeNs: Number(ns) });
    }
  }
  const names = bpfProgramNames();
  return new Map(
    [...counted].map(([id, c]) => [id, { name: names.get(id) ?? `prog ${id}`, ...c }]),
  );
}

/** Names of the loaded BPF programs by ID (`bpftool prog show`); empty if bpftool fails. */
function bpfProgramNames(): Map<number, string> {
  const out = new Deno.Command("bpftool", { args: ["--json", "prog", "show"], stderr: "null" })
    .outputSync();
  if (!out.success) return new Map();
  const programs = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    id: number;
    name?: string;
  }[];
  return new Map(programs.map((p) => [p.id, p.name ?? `prog ${p.id}`]));
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

/**
 * A busy loop pinned to one CPU (`taskset -c CPU sh -c 'while :; do :; done'`): the
 * contention of a host whose other work keeps a core busy. Spawned before a measurement and
 * killed (SIGKILL, by PID) after it; `stop()` is safe to call twice, also before `ready()`.
 *
 * @example
 * ```ts
 * import { Hog } from "./_proc.ts";
 * const hog = new Hog(0, 100);
 * try {
 *   await hog.ready();
 *   // measure
 * } finally {
 *   await hog.stop();
 * }
 * ```
 */
export class Hog implements AsyncDisposable {
  /** The CPU it spins on. */
  readonly cpu: number;
  readonly #hz: number;
  readonly #child: Deno.ChildProcess;
  #exited = false;
  #started = 0;
  #ticks0 = 0;
  #stopped: Promise<{ busy: number }> | undefined;

  /**
   * Spawns the loop on `cpu`.
   *
   * @param cpu the CPU to pin it to
   * @param hz clock ticks per second of /proc/PID/stat ({@linkcode clockTicksPerSecond})
   */
  constructor(cpu: number, hz: number) {
    this.cpu = cpu;
    this.#hz = hz;
    this.#child = new Deno.Command("taskset", {
      args: ["-c", String(cpu), "sh", "-c", "while :; do :; done"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child.status.then(() => this.#exited = true);
  }

  /** Process id of the loop (taskset execs the shell, so this is the spinning process). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Resolves once the loop runs on its CPU (taskset has pinned itself and exec'd the shell). */
  async ready(): Promise<void> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      if (this.#exited) {
        const err = (await new Response(this.#child.stderr).text()).trim();
        const code = (await this.#child.status).code;
        throw new Error(
          `Cannot start the busy loop on CPU ${this.cpu} (taskset exited with ${code}): ${err}`,
        );
      }
      try {
        if (Deno.readTextFileSync(`/proc/${this.pid}/comm`).trim() === "sh") {
          this.#started = Date.now();
          this.#ticks0 = cpuTicks(this.pid);
          return;
        }
      } catch {
        // Not readable yet; look again.
      }
      if (Date.now() > deadline) {
        throw new Error(
          `Cannot start the busy loop on CPU ${this.cpu}: taskset did not exec sh in 5 s`,
        );
      }
      await delay(10);
    }
  }

  /** Kills the loop; resolves with the share of one CPU it used since `ready()` (about 1). */
  stop(): Promise<{ busy: number }> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async #stop(): Promise<{ busy: number }> {
    let busy = NaN;
    if (this.#started > 0 && !this.#exited) {
      try {
        const seconds = (Date.now() - this.#started) / 1000;
        busy = (cpuTicks(this.pid) - this.#ticks0) / this.#hz / seconds;
      } catch {
        // Gone meanwhile.
      }
    }
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await this.#child.status;
    await this.#child.stderr.cancel().catch(() => {});
    return { busy };
  }
}
