/**
 * The loaded and attached BPF side: open it, read its counters, close it.
 * Records are read by the poll loop (ffi/flow_source.ts) through {@linkcode Agent.poll}; interim
 * records of open sockets, when wanted, through {@linkcode Agent.snapshot}.
 *
 * @module
 */
import {
  DEFAULT_FLOWS_MAX,
  DEFAULT_RING_BYTES,
  DEFAULT_WAKEUP_BYTES,
} from "../lib/capture_sizes.ts";
import type { ClockReading } from "../lib/clock.ts";
import { MAPS_PIN_DIR } from "../lib/map_layout.ts";
import { FdMap } from "./bpf_map.ts";
import { cgroup2Root, hasBpfPrivileges, hasNetAdmin, prepareKernel } from "./kernel_prereqs.ts";
import {
  cString,
  type Native,
  nativeError,
  nativeLog,
  openNative,
  OpenOption,
  RetiringStat,
  Stat,
} from "./symbols.ts";

/** Options of {@linkcode Agent.open}. */
export interface AgentOptions {
  /** bpffs directory for the pinned identity maps. */
  pinDir?: string;
  /** Use the perf buffer even where the kernel has a ring buffer. */
  perfBuffer?: boolean;
  /**
   * cgroup v2 directory whose sockets sock_ops follows (the primary capture path): "auto" (the
   * default) for the cgroup v2 root, "" for none (tracepoints only).
   */
  cgroupPath?: string;
  /** Pin nothing: the capture ends with the process instead of surviving a restart (tests). */
  noPin?: boolean;
  /** Skip seeding sockets that are already open. */
  noSeed?: boolean;
  /**
   * Ring buffer bytes (power of two); the perf buffer splits the same budget across CPUs.
   * Default {@linkcode DEFAULT_RING_BYTES}.
   */
  ringBytes?: number;
  /** Capacity of the per-socket state map (open sockets tracked at once); default {@linkcode DEFAULT_FLOWS_MAX}. */
  flowsMax?: number;
  /** Data waiting in the ring before the kernel wakes the reader, bytes; default {@linkcode DEFAULT_WAKEUP_BYTES}. */
  wakeupBytes?: number;
  /** Keep libbpf debug output in the log. */
  verbose?: boolean;
}

/** Counters and facts the BPF side reports. */
export interface AgentStats {
  /** Records the kernel side could not hand over (buffer full), cumulative. */
  kernelDrops: bigint;
  /** Tracepoint runs the kernel skipped because the program would nest on a CPU, cumulative. */
  recursionMisses: bigint;
  flowsMax: number;
  transport: "ringbuf" | "perfbuf";
  /** "sock_ops" when the cgroup program follows sockets; "tp_btf" for tracepoints alone. */
  attach: "sock_ops" | "tp_btf";
  /** True when this agent took over a capture an earlier agent left pinned (restart, upgrade). */
  resumed: boolean;
  /**
   * The ring buffer: its kernel map ID, the positions consumed and produced, and the records
   * between them, which the next reader gets (all 0 for perf).
   */
  ring: { id: number; consumed: bigint; produced: bigint; waiting: number };
  /** Kernel clock of record timestamps: 0 CLOCK_BOOTTIME, 1 CLOCK_MONOTONIC. */
  clock: 0 | 1;
  /**
   * Sockets seeded at start; -1 when not seeded: no TCP iterator, `noSeed`, or a resumed capture
   * (its programs followed every socket opened since it was seeded).
   */
  seeded: number;
  /**
   * True while the state tracepoint is attached: it catches the closes of sockets sock_ops does
   * not follow (those open since before the capture). It is detached once sock_ops follows every
   * open socket ({@linkcode Agent.followCheck}).
   */
  stateTracepoint: boolean;
  /** Open sockets sock_ops did not follow at the last check; -1 when none could be made. */
  unfollowed: number;
  /**
   * Sockets nobody followed (orphans of other namespaces, open since before the capture) that
   * were recorded at their destroy, once the state tracepoint was detached; cumulative.
   */
  unfollowedAtDestroy: bigint;
  /**
   * Sockets whose close and destroy no program ran for (the kernel skipped them), recorded by
   * {@linkcode Agent.sweep} from the states they left; cumulative.
   */
  swept: bigint;
  /** States of freed sockets whose record was out but whose destroy no program saw, deleted. */
  sweptStale: bigint;
}

/** Raised when the BPF side cannot be loaded or attached. */
export class AgentLoadError extends Error {
  override name = "AgentLoadError";
}

const ERRNO: Record<number, string> = {
  1: "operation not permitted",
  2: "no such file or directory",
  7: "argument list too long",
  12: "out of memory",
  13: "permission denied",
  16: "device or resource busy",
  22: "invalid argument",
  95: "operation not supported",
  524: "not supported by this kernel",
};

/**
 * The one line for a failed open: the step, the errno's meaning, what to do, and the end of
 * libbpf's log. EPERM and EACCES mean missing privileges, unless the process has them: then the
 * kernel's verifier refused a program (it answers EACCES too), and the log says why.
 */
export function explainLoadFailure(
  err: number,
  step: string,
  log: string,
  privileged = hasBpfPrivileges(),
): string {
  const lines = log.trim().split("\n").filter((l) => l.trim() !== "");
  const tail = lines.slice(-6).join(" | ");
  const denied = -err === 1 || -err === 13;
  const hint = !denied
    ? ""
    : privileged
    ? " (the kernel's verifier refused a program: flowexporter doctor checks what this kernel " +
      "supports; report the libbpf lines with the kernel version)"
    : " (run as root or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)";
  const what = step || `load the BPF program: ${ERRNO[-err] ?? `errno ${-err}`}`;
  return `Cannot ${what}${hint}${tail ? `; libbpf: ${tail}` : ""}`;
}

/**
 * Where sock_ops attaches for `cgroupPath`. "auto": the cgroup v2 root, if there is one and the
 * process may attach cgroup programs (CAP_NET_ADMIN); otherwise none, and tracepoints alone
 * capture (the agent says so at start).
 */
function resolveCgroupPath(cgroupPath = "auto"): string {
  if (cgroupPath !== "auto") return cgroupPath;
  return hasNetAdmin() ? cgroup2Root() ?? "" : "";
}

/** Directories under `pinDir` that hold a pinned capture (one per state version). */
export function pinnedCaptures(pinDir: string = MAPS_PIN_DIR): string[] {
  try {
    return [...Deno.readDirSync(pinDir)]
      .filter((e) => e.isDirectory && /^capture-v\d+$/.test(e.name))
      .map((e) => `${pinDir}/${e.name}`);
  } catch {
    return [];
  }
}

/** The directory under `pinDir` where an agent of this build pins its capture. */
export function ownCapture(pinDir: string = MAPS_PIN_DIR): string {
  return `${pinDir}/capture-v${openNative().fe_state_version()}`;
}

/**
 * Captures under `pinDir` that agents of another state version left pinned (an upgrade across
 * `FE_STATE_VERSION`): this agent cannot take them over, so it retires them
 * ({@linkcode RetiringCapture}).
 */
export function otherVersionCaptures(pinDir: string = MAPS_PIN_DIR): string[] {
  const own = ownCapture(pinDir);
  return pinnedCaptures(pinDir).filter((dir) => dir !== own);
}

/** How long {@linkcode RetiringCapture.open} waits for the kernel to release the old links. */
const RETIRE_WAIT_MS = 5_000;

/**
 * A capture another state version's agent left pinned, being retired by this agent once its own
 * programs run: the old programs are detached when it opens, then its ring buffer is read to the
 * end and committed as {@linkcode Agent.poll} and {@linkcode Agent.commit} do for the own ring.
 * Close it, then remove its directory ({@linkcode RetiringCapture.remove}).
 */
export class RetiringCapture implements Disposable {
  /** The capture's directory. */
  readonly dir: string;
  readonly #native: Native;
  #handle: Deno.PointerObject | null;
  readonly #position = new BigUint64Array(1);

  private constructor(native: Native, handle: Deno.PointerObject, dir: string) {
    this.#native = native;
    this.#handle = handle;
    this.dir = dir;
  }

  /**
   * Detaches the programs of the capture in `dir` (waiting until the kernel has released its links
   * and the runs under way have ended) and opens its ring buffer.
   *
   * @throws {AgentLoadError} when its links cannot be unpinned or stay attached (another process
   *   holds them), or its ring buffer cannot be opened
   */
  static open(dir: string): RetiringCapture {
    const native = openNative();
    const out = new BigUint64Array(1);
    const err = native.fe_retiring_open(cString(dir), RETIRE_WAIT_MS, out);
    const handle = Deno.UnsafePointer.create(out[0]);
    if (err !== 0 || handle === null) {
      throw new AgentLoadError(
        `Cannot ${nativeError(native) || `retire the capture ${dir}: errno ${-err}`}`,
      );
    }
    return new RetiringCapture(native, handle, dir);
  }

  /** Kernel ID of its ring buffer map: the journal's name for the records read from it. */
  get ringId(): number {
    return Number(this.#stats()[RetiringStat.ringId]);
  }

  /** Records of another record version its ring held: unreadable, skipped. */
  get foreignRecords(): number {
    return Number(this.#stats()[RetiringStat.foreign]);
  }

  /** Records its ring lost (it was full) that no batch reported. */
  get unreportedDrops(): bigint {
    return this.#stats()[RetiringStat.unreportedDrops];
  }

  /** Position its ring has been consumed up to. */
  consumed(): bigint {
    return this.#stats()[RetiringStat.consumed];
  }

  /**
   * Copies its next records into `buffer`, without committing them.
   *
   * @returns the bytes written (whole records; 0 at the end) and the ring position after them
   */
  read(buffer: Uint8Array): { bytes: number; position: bigint } {
    const n = this.#native.fe_retiring_read(this.#live(), buffer, buffer.length, this.#position);
    if (n < 0) throw new AgentLoadError(`Cannot read the retired capture ${this.dir}: errno ${-n}`);
    return { bytes: n, position: this.#position[0] };
  }

  /** Gives its ring's space up to `position` back; false when out of range. */
  commit(position: bigint): boolean {
    return this.#native.fe_retiring_commit(this.#live(), position) === 0;
  }

  /** Unmaps its ring; safe to call twice. */
  close(): void {
    if (this.#handle === null) return;
    this.#native.fe_retiring_close(this.#handle);
    this.#handle = null;
  }

  /** Closes it and unpins what is left (its maps): the kernel frees them. */
  remove(): void {
    this.close();
    Deno.removeSync(this.dir, { recursive: true });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #stats(): BigUint64Array {
    const out = new BigUint64Array(RetiringStat.count);
    this.#native.fe_retiring_stats(this.#live(), out, RetiringStat.count);
    return out;
  }

  #live(): Deno.PointerObject {
    if (this.#handle === null) {
      throw new AgentLoadError(`The retired capture ${this.dir} is closed`);
    }
    return this.#handle;
  }
}

/**
 * Ends a pinned capture for good: unpins its links and maps, so the kernel detaches the
 * programs and frees the buffer (records still in it are lost; stop the agent first).
 *
 * @returns the directories removed
 */
export function detachCapture(pinDir: string = MAPS_PIN_DIR): string[] {
  const dirs = pinnedCaptures(pinDir);
  for (const dir of dirs) Deno.removeSync(dir, { recursive: true });
  return dirs;
}

/**
 * Gives back what a quiet agent does not need (fe_release_idle_memory): the compression context,
 * which the next window makes again, and the C heap's free memory, which glibc otherwise keeps
 * after a window is sealed and shipped. About 2.5 MiB of a quiet agent's RSS.
 *
 * @returns whether heap memory went back
 */
export function releaseIdleMemory(native: Native = openNative()): boolean {
  return native.fe_release_idle_memory() === 1;
}

/**
 * Gives back the pages of the agent's executable that only starting it read
 * (fe_release_executable_pages): Deno's CLI, module loading and the startup snapshot, about 28 of
 * the 36 MiB of the executable a just-started agent holds. Pages the agent needs again are read
 * back on their next use; pages another process maps stay.
 *
 * @returns the bytes of the executable's read-only mappings advised
 * @throws Error when the kernel refuses (no MADV_PAGEOUT before Linux 5.4)
 */
export function releaseExecutablePages(native: Native = openNative()): number {
  const advised = native.fe_release_executable_pages();
  if (advised < 0n) {
    const err = -Number(advised);
    throw new Error(`Cannot page out the executable: ${ERRNO[err] ?? `errno ${err}`}`);
  }
  return Number(advised);
}

/** The attached BPF side. Close it after the poll loop stopped. */
export class Agent implements Disposable {
  readonly #native: Native;
  #handle: Deno.PointerObject | null;
  /** fe_poll's out-parameter: one poll runs at a time. */
  readonly #position = new BigUint64Array(1);

  private constructor(native: Native, handle: Deno.PointerObject) {
    this.#native = native;
    this.#handle = handle;
  }

  /**
   * Checks the host's privileges and BTF, and mounts tracefs and bpffs where they are missing:
   * before this, a pin directory under /sys/fs/bpf cannot be made on a host that has not mounted
   * bpffs. {@linkcode open} does it too.
   *
   * @throws {PrereqError} when the host lacks something (privileges, BTF, mounts)
   */
  static prepareHost(): void {
    prepareKernel(openNative());
  }

  /**
   * Checks the host ({@linkcode prepareHost}), loads, attaches and seeds the BPF side.
   *
   * @throws {PrereqError} when the host lacks something (privileges, BTF, mounts)
   * @throws {AgentLoadError} when libbpf or the verifier refuses
   */
  static open(options: AgentOptions = {}): Agent {
    Agent.prepareHost();
    const native = openNative();
    const pinDir = options.pinDir ?? MAPS_PIN_DIR;
    Deno.mkdirSync(pinDir, { recursive: true, mode: 0o700 });
    // mkdir's mode is masked by umask and leaves existing directories alone.
    Deno.chmodSync(pinDir, 0o700);

    const flags = (options.perfBuffer ? OpenOption.perfBuffer : 0) |
      (options.noPin ? OpenOption.noPin : 0) |
      (options.noSeed ? OpenOption.noSeed : 0) |
      (options.verbose ? OpenOption.verbose : 0);
    const out = new BigUint64Array(1);
    const err = native.fe_open(
      cString(pinDir),
      cString(resolveCgroupPath(options.cgroupPath)),
      flags,
      options.ringBytes ?? DEFAULT_RING_BYTES,
      options.flowsMax ?? DEFAULT_FLOWS_MAX,
      options.wakeupBytes ?? DEFAULT_WAKEUP_BYTES,
      out,
    );
    const handle = Deno.UnsafePointer.create(out[0]);
    if (err !== 0 || handle === null) {
      throw new AgentLoadError(explainLoadFailure(err, nativeError(native), nativeLog(native)));
    }
    return new Agent(native, handle);
  }

  /** Bytes of one `struct fe_flow` record, as the library writes them. */
  get recordSize(): number {
    return this.#native.fe_record_size();
  }

  /**
   * Waits up to `timeoutMs` for the kernel to wake the reader, then copies the records waiting
   * into `buffer`, without committing them. A wait runs on Deno's blocking thread pool: the
   * event loop goes on meanwhile. With `timeoutMs` 0 (draining on after a full buffer, the usual
   * case under load) nothing waits, so it runs on this thread and settles at once. Do not touch
   * `buffer`, or close the agent, before the promise settles.
   *
   * @returns the bytes written (whole records) and the ring position after them (0 with the
   *   perf buffer)
   * @throws {AgentLoadError} when the kernel side fails
   */
  async poll(buffer: Uint8Array, timeoutMs: number): Promise<{ bytes: number; position: bigint }> {
    const position = this.#position;
    const n = timeoutMs === 0
      ? this.#native.fe_poll_now(this.#live(), 0, buffer, buffer.length, position)
      : await this.#native.fe_poll(this.#live(), timeoutMs, buffer, buffer.length, position);
    if (n < 0) throw new AgentLoadError(`Cannot poll the flow buffer: errno ${-n}`);
    return { bytes: n, position: position[0] };
  }

  /**
   * Takes one snapshot pass: interim records (`FLAG_INTERIM`, lib/decode.ts) of the open TCP
   * sockets, of every network namespace, that the capture tracks and that opened at least
   * `minAgeNs` ago, with their cumulative counters; `t_end_ns` is the snapshot time. The kernel
   * walks the sockets' states on Deno's blocking thread pool (docs/benchmarks.md), so the
   * event loop goes on meanwhile; each chunk of whole raw records goes to `onRecords` as a view
   * of `buffer`, valid only during the call (copy what you keep). One pass at a time. A throw
   * from `onRecords` ends the pass and rejects; so does closing the agent from `onRecords`.
   * Do not close it elsewhere before the promise settles (a read may be running).
   *
   * @example
   * ```ts
   * const n = await agent.snapshot(30_000_000_000n, new Uint8Array(1 << 20), (bytes) => {
   *   journal.append(bytes);
   * });
   * ```
   *
   * @param minAgeNs skip sockets younger than this, ns (0: every tracked open socket)
   * @param buffer where the records land; at least one record long, a multiple of
   *   {@linkcode Agent.recordSize} fills best
   * @param onRecords called with each chunk of whole records
   * @returns the number of records the pass handed over
   * @throws {AgentLoadError} when a pass cannot start (one is running, or the kernel's map
   *   iterator cannot walk a map) or the kernel side fails during it
   */
  async snapshot(
    minAgeNs: bigint,
    buffer: Uint8Array,
    onRecords: (bytes: Uint8Array) => void,
  ): Promise<number> {
    const handle = this.#live();
    const recordSize = this.recordSize;
    if (buffer.length < recordSize) {
      throw new AgentLoadError(
        `Cannot take an interim snapshot into ${buffer.length} bytes: a record is ${recordSize}`,
      );
    }
    const begun = this.#native.fe_snapshot_begin(handle, minAgeNs);
    if (begun < 0) {
      throw new AgentLoadError(`Cannot ${nativeError(this.#native) || "start a snapshot pass"}`);
    }
    let records = 0;
    try {
      for (;;) {
        const n = await this.#native.fe_snapshot_read(handle, buffer, buffer.length);
        if (n < 0) {
          throw new AgentLoadError(
            `Cannot read the interim snapshot: ${ERRNO[-n] ?? `errno ${-n}`}`,
          );
        }
        if (n === 0) return records;
        records += n / recordSize;
        onRecords(buffer.subarray(0, n));
        // fe_close() ended the pass with the agent: its handle is gone.
        if (this.#handle === null) {
          throw new AgentLoadError("The BPF agent was closed during a snapshot pass");
        }
      }
    } finally {
      // Ends a pass cut short (a throw); after the last read it has nothing left to do.
      if (this.#handle !== null) this.#native.fe_snapshot_end(handle);
    }
  }

  /** The BPF side's counters. */
  stats(): AgentStats {
    const out = new BigUint64Array(Stat.count);
    this.#native.fe_stats(this.#live(), out, Stat.count);
    return {
      kernelDrops: out[Stat.kernelDrops] + out[Stat.perfLost],
      recursionMisses: out[Stat.recursionMisses],
      flowsMax: Number(out[Stat.flowsMax]),
      transport: out[Stat.transport] === 0n ? "ringbuf" : "perfbuf",
      attach: out[Stat.sockops] === 1n ? "sock_ops" : "tp_btf",
      clock: out[Stat.clock] === 0n ? 0 : 1,
      seeded: Number(BigInt.asIntN(64, out[Stat.seeded])),
      resumed: out[Stat.resumed] === 1n,
      stateTracepoint: out[Stat.stateTracepoint] === 1n,
      unfollowed: Number(BigInt.asIntN(64, out[Stat.unfollowed])),
      unfollowedAtDestroy: out[Stat.unfollowedAtDestroy],
      swept: out[Stat.swept],
      sweptStale: out[Stat.sweptStale],
      ring: {
        id: Number(out[Stat.ringId]),
        consumed: out[Stat.ringConsumed],
        produced: out[Stat.ringProduced],
        waiting: Number(out[Stat.ringWaiting]),
      },
    };
  }

  /**
   * Counts again the open sockets sock_ops does not follow (open since before the capture, in
   * any network namespace) and, when none is left, detaches the state tracepoint that catches
   * their closes. The agent's start makes the first check. It walks every task's descriptors in
   * the kernel, on Deno's blocking thread pool (about 7 ms per 10 000 sockets), so the event loop
   * goes on meanwhile. Do not close the agent before the promise settles.
   *
   * @returns the sockets counted: 0 once the tracepoint is detached, -1 where the kernel cannot
   *   tell (before Linux 6.13, without sock_ops or seeding, outside the initial PID namespace)
   * @throws {AgentLoadError} when the kernel side fails
   */
  async followCheck(): Promise<number> {
    const n = Number(await this.#native.fe_follow_check(this.#live()));
    if (n === -95) return -1; // EOPNOTSUPP: the check cannot prove it here
    if (n < 0) {
      throw new AgentLoadError(
        `Cannot count the unfollowed sockets: ${ERRNO[-n] ?? `errno ${-n}`}`,
      );
    }
    return n;
  }

  /**
   * Sweeps the flow states: a socket whose close and destroy the kernel ran no program for left
   * its state behind, and gets its record now, into the ring buffer like any other (`swept`,
   * close state unknown, ending when the agent last saw it open). It walks every state, on Deno's
   * blocking thread pool, so the event loop goes on meanwhile. Do not close the agent before the
   * promise settles.
   *
   * @returns the records made; -1 where there is no sweep (perf buffer, or before Linux 5.13)
   * @throws {AgentLoadError} when the kernel side fails
   */
  async sweep(): Promise<number> {
    const n = Number(await this.#native.fe_sweep(this.#live()));
    if (n === -95) return -1; // EOPNOTSUPP
    if (n < 0) {
      throw new AgentLoadError(`Cannot ${nativeError(this.#native) || "sweep the flow states"}`);
    }
    return n;
  }

  /**
   * Gives the ring buffer's space up to `position` back to the kernel: the records before it are
   * safe in the journal. A position past the read one also skips reading up to it (records an
   * earlier agent journaled but did not commit).
   *
   * @returns false when `position` is behind the committed one or past the written one
   */
  commit(position: bigint): boolean {
    return this.#native.fe_commit(this.#live(), position) === 0;
  }

  /** Wall clock minus the kernel clock the records are stamped with, measured now. */
  clockReading(): ClockReading {
    const offset = new BigInt64Array(1);
    const clock = this.stats().clock;
    const uncertaintyNs = this.#native.fe_clock_offset(clock, offset);
    return { offsetNs: offset[0], uncertaintyNs };
  }

  /** One of the program's maps (its own descriptor: close it). */
  openMap(name: string): FdMap {
    const fd = this.#native.fe_map_fd(this.#live(), cString(name));
    if (fd < 0) throw new AgentLoadError(`Cannot find BPF map ${name}: errno ${-fd}`);
    return new FdMap(this.#native, fd, name);
  }

  /** Detaches and frees the BPF side; safe to call twice. */
  close(): void {
    if (this.#handle === null) return;
    this.#native.fe_close(this.#handle);
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #live(): Deno.PointerObject {
    if (this.#handle === null) throw new AgentLoadError("The BPF agent is closed");
    return this.#handle;
  }
}
