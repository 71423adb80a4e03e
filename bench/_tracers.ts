/**
 * The tracers the benchmark compares, run as child processes whose stdout
 * goes straight to a file on tmpfs (the benchmark spends no CPU reading it
 * while the churn runs): the agent (`main.ts run`), Debian's tcplife-bpfcc, and
 * two counters of closed sockets (bpftrace's, and build/sockops_counter's).
 *
 * A stopped agent leaves its BPF programs attached and its capture pinned
 * under its pin directory, for the next start to take over:
 * {@linkcode endCapture} ends it.
 *
 * @module
 */
import { packagedEnvironment } from "../tests/_packaging.ts";
import { cgroup2Root } from "../ffi/kernel_prereqs.ts";
import { countFds, cpuTicks, delay, executable } from "./_proc.ts";
import type { RecordFormat } from "./_records.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const TCPLIFE = "tcplife-bpfcc";
/** Closed TCP sockets, listeners left out: the least a tracer can do per flow. */
const BARE_COUNTER = "tracepoint:sock:inet_sock_set_state " +
  "/args->protocol == 6 && args->newstate == 7 && args->oldstate != 10/ { @closes = count(); }";

/** What a tracer reported when it stopped. */
export interface TracerStop {
  exitCode: number;
  /** Records the agent says it wrote (every TCP flow on the host). */
  records?: number;
  /** Agent: records the kernel could not hand over. tcplife: perf samples lost. */
  drops?: number;
  /** Agent: tracepoint runs the kernel skipped because the program would nest. */
  recursionMisses?: number;
  /** Agent: records made at destroy because the close run was skipped. */
  recovered?: number;
  /** Agent: records that reached the pinned ring after its last drain, for the next start. */
  leftInRing?: number;
  /** Agent: it took over the capture an earlier agent left pinned. */
  resumed?: boolean;
  /** Agent: flows an earlier (killed) agent journaled that this one shipped to the spool. */
  replayed?: number;
  /** CPU time (clock ticks) of the process last seen before it exited: its work until the end. */
  finalCpuTicks?: number;
}

/** A running tracer. */
export class Tracer implements AsyncDisposable {
  readonly name: string;
  readonly format: RecordFormat;
  readonly outputPath: string;
  readonly log: string[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #stopSignal: Deno.Signal;
  readonly #logDone: Promise<void>;
  #exited = false;
  #stopped: Promise<TracerStop> | undefined;

  private constructor(
    name: string,
    format: RecordFormat,
    command: string[],
    outputPath: string,
    stopSignal: Deno.Signal,
    env: Record<string, string> = {},
  ) {
    this.name = name;
    this.format = format;
    this.outputPath = outputPath;
    this.#stopSignal = stopSignal;
    // exec: the pid we measure is the tracer itself, not a shell.
    this.#child = new Deno.Command("sh", {
      args: ["-c", 'exec "$@" > "$BENCH_OUTPUT"', "sh", ...command],
      env: { ...env, BENCH_OUTPUT: outputPath },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child.status.then(() => this.#exited = true);
    this.#logDone = this.#readLog();
  }

  /** Process id of the tracer (after exec: the deno or python process itself). */
  get pid(): number {
    return this.#child.pid;
  }

  /**
   * Starts the agent with `args` after `run`, stdout to `outputPath`, and its
   * own pin directory, lock file, spool and certificate under `workDir`; resolves once it
   * captures. The certificate is `certificate` (PEM), the host's identity then, or absent.
   * `main` is the agent's entry point: this checkout's `main.ts`, or another build's (a
   * reference to compare with). `deno` is the executable it runs from (see
   * {@linkcode privateDeno}).
   */
  static async startAgent(
    name: string,
    args: string[],
    outputPath: string,
    pinDir: string,
    workDir: string,
    { main = MAIN, deno = Deno.execPath(), certificate }: {
      main?: string;
      deno?: string;
      certificate?: string;
    } = {},
  ): Promise<Tracer> {
    const command = [deno, "run", "--allow-all", main, "run", ...args];
    command.push("--pin-dir", pinDir, "--lock-file", `${workDir}/lock`);
    // The certificate's directory is watched: one of its own, as on a host, so that the agent's
    // stdout and spool beside it do not wake the watcher with every write.
    const certDir = `${workDir}/identity`;
    await Deno.mkdir(certDir, { recursive: true });
    const certPath = `${certDir}/${certificate === undefined ? "no-identity" : "identity"}.pem`;
    if (certificate !== undefined) await Deno.writeTextFile(certPath, certificate);
    command.push("--spool-dir", `${workDir}/spool`, "--cert-path", certPath);
    // The environment its build's unit gives the agent; no config file from the host: the flags
    // are the whole configuration.
    const unit = Deno.readTextFileSync(new URL("packaging/flowexporter.service", `file://${main}`));
    const env = { ...packagedEnvironment(unit), FLOWEXPORTER_CONFIG: "" };
    const t = new Tracer(name, "json", command, outputPath, "SIGTERM", env);
    await t.#waitFor(() => t.log.some((l) => l.includes("capturing TCP flows")), 60_000);
    if (certificate !== undefined && !t.log.some((l) => l.includes("Host identity is "))) {
      await t.stop();
      throw new Error(`Cannot measure the agent with a host identity: it did not take ${certPath}`);
    }
    const exe = executable(t.pid);
    if (exe !== Deno.realPathSync(deno)) {
      await t.stop();
      throw new Error(`Cannot measure the agent: pid ${t.pid} runs ${exe}, not ${deno}`);
    }
    return t;
  }

  /** Starts tcplife with stdout to `outputPath`; resolves once its probe and buffers are open. */
  static async startTcplife(command: string, outputPath: string): Promise<Tracer> {
    // SIGINT: tcplife exits through KeyboardInterrupt, which flushes its buffered stdout.
    const t = new Tracer("tcplife-bpfcc", "tcplife", [command], outputPath, "SIGINT");
    // The tracepoint's perf event, then one perf buffer per online CPU for IPv4 and for IPv6.
    const fds = 1 + 2 * navigator.hardwareConcurrency;
    await t.#waitFor(() => countFds(t.pid, "perf_event") >= fds, 120_000);
    await delay(300); // from opening the buffers to polling them
    return t;
  }

  /** Starts a bpftrace counter of closed TCP sockets; resolves once it attached. */
  static startBareCounter(command: string, outputPath: string): Promise<Tracer> {
    return Tracer.#startCounter("bpftrace", [command, "-e", BARE_COUNTER], outputPath);
  }

  /**
   * Starts build/sockops_counter (closes counted by sock_ops) on the cgroup v2 root, which
   * {@linkcode prepareSockopsCounter} found; resolves once it attached.
   */
  static startSockopsCounter(command: string, outputPath: string): Promise<Tracer> {
    return Tracer.#startCounter("sockops_counter", [command, cgroup2Root()!], outputPath);
  }

  /** A counter that prints "Attaching" once it runs, and "@closes: N" at SIGINT, then exits. */
  static async #startCounter(name: string, command: string[], outputPath: string) {
    const t = new Tracer(name, "count", command, outputPath, "SIGINT");
    await t.#waitFor(() => Deno.readTextFileSync(outputPath).includes("Attaching"), 60_000);
    await delay(300);
    return t;
  }

  /**
   * Stops the tracer with its clean-exit signal, or `signal` (SIGKILL after 30 s); safe to
   * call twice (the first call's signal counts).
   */
  stop(signal: Deno.Signal = this.#stopSignal): Promise<TracerStop> {
    this.#stopped ??= this.#stop(signal);
    return this.#stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async #stop(signal: Deno.Signal): Promise<TracerStop> {
    // Sample the CPU time until the process is gone: what it spent on the way out counts.
    let finalCpuTicks: number | undefined;
    const sample = () => {
      try {
        if (!this.#exited) finalCpuTicks = cpuTicks(this.pid);
      } catch {
        // Exited between the check and the read.
      }
    };
    sample();
    if (!this.#exited) this.#child.kill(signal);
    const sampler = setInterval(sample, 20);
    const timer = setTimeout(() => {
      if (!this.#exited) this.#child.kill("SIGKILL");
    }, 30_000);
    const status = await this.#child.status;
    clearInterval(sampler);
    clearTimeout(timer);
    await this.#logDone;
    const result: TracerStop = { exitCode: status.code, finalCpuTicks };
    // bcc reports lost perf samples only when there are some.
    if (this.format === "tcplife") result.drops = 0;
    for (const line of this.log) {
      const m =
        /stopped \(records (\d+), kernel drops (\d+), recursion misses (\d+)(?:, recovered at destroy (\d+))?/
          .exec(line);
      if (m) {
        result.records = Number(m[1]);
        result.drops = Number(m[2]);
        result.recursionMisses = Number(m[3]);
        if (m[4] !== undefined) result.recovered = Number(m[4]);
        const left = /, left in the ring (\d+)\)/.exec(line);
        if (left) result.leftInRing = Number(left[1]);
      }
      if (/capturing TCP flows \(.*resumed the pinned capture/.test(line)) result.resumed = true;
      const replayed = /Capture journal: (\d+) flows/.exec(line);
      if (replayed) result.replayed = Number(replayed[1]);
      const lost = /^Possibly lost (\d+) samples/.exec(line);
      if (lost) result.drops = (result.drops ?? 0) + Number(lost[1]);
    }
    return result;
  }

  async #waitFor(ready: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#exited) {
        await this.#logDone;
        throw new Error(`${this.name} exited before it was ready; its log:\n${this.#tail()}`);
      }
      try {
        if (ready()) return;
      } catch {
        // /proc entries appear with the exec; look again.
      }
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(
          `${this.name} was not ready after ${timeoutMs} ms; its log:\n${this.#tail()}`,
        );
      }
      await delay(50);
    }
  }

  #tail(): string {
    return this.log.slice(-15).join("\n");
  }

  async #readLog(): Promise<void> {
    let rest = "";
    for await (const chunk of this.#child.stderr.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop() ?? "";
      this.log.push(...lines.filter((l) => l !== ""));
    }
    if (rest) this.log.push(rest);
  }
}

/**
 * A copy of this deno in `dir`, for one agent variant to run from. On a host the agent is the one
 * process that maps its executable, so it can give back what only starting read of it
 * (releaseExecutablePages): pages another process maps stay. Run from this deno, each agent would
 * share its pages with the benchmark itself and with the other agents. `dir` must be on a disk's
 * file system: a tmpfs copy is shared memory, not page cache.
 */
export function privateDeno(dir: string, name: string): string {
  const path = `${dir}/deno-${name}`;
  Deno.copyFileSync(Deno.execPath(), path);
  return path;
}

/**
 * Transpiles an agent's modules into Deno's cache. The first `deno run` of a tree does it in the
 * agent's own process, which kept 12 MiB more RSS, idle: it must not be the first measurement.
 *
 * @param main the agent's entry point (default: this checkout's)
 */
export async function cacheModules(main: string = MAIN): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["cache", "--quiet", main],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot cache ${main}'s modules: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
}

/**
 * Ends the capture a stopped agent left pinned under `pinDir`: removing the directory unpins
 * the programs' links, the maps and the ring buffer, and the kernel detaches and frees them
 * (what `flowexporter detach` does, without starting Deno again).
 *
 * @throws when the directory is still there afterwards
 */
export async function endCapture(pinDir: string): Promise<void> {
  await Deno.remove(pinDir, { recursive: true }).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
  if (isDirectory(pinDir)) {
    throw new Error(`Cannot end the agent's capture: ${pinDir} is still there after removal`);
  }
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Runs a shell script; its stdout and stderr as one text. */
async function sh(script: string): Promise<{ ok: boolean; out: string }> {
  const out = await new Deno.Command("sh", { args: ["-c", script], stdin: "null" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { ok: out.success, out: text.trim() };
}

async function aptInstall(packages: string, log: (line: string) => void): Promise<boolean> {
  log(`installing ${packages} with apt-get (for the comparison)`);
  const install =
    `DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages}`;
  if ((await sh(`${install} >/dev/null`)).ok) return true;
  // A fresh machine may have no package lists yet.
  const r = await sh(`apt-get update -qq >/dev/null && ${install} >/dev/null`);
  if (!r.ok) {
    log(`apt-get could not install ${packages}: ${r.out.split("\n").slice(-3).join(" | ")}`);
  }
  return r.ok;
}

/**
 * Makes tcplife-bpfcc runnable: installs bpfcc-tools and the distribution's
 * kernel headers when missing, and links /lib/modules/$(uname -r)/build (and
 * source) to them when the running kernel has none of its own. bcc compiles
 * tcplife against those headers: with another kernel's headers its byte counts
 * are wrong, but its costs (one probe, one perf event per flow) hold.
 *
 * @returns the command to run, or the reason tcplife cannot run
 */
export async function prepareTcplife(
  install: boolean,
  log: (line: string) => void,
): Promise<{ command: string } | { reason: string }> {
  const found = await sh(`command -v ${TCPLIFE} || PATH=$PATH:/usr/sbin command -v ${TCPLIFE}`);
  let command = found.ok ? found.out.split("\n")[0] : "";
  if (!command) {
    if (!install) return { reason: `${TCPLIFE} is not installed (install bpfcc-tools)` };
    if (!(await aptInstall("bpfcc-tools", log))) {
      return { reason: "cannot install bpfcc-tools with apt-get" };
    }
    command = "/usr/sbin/" + TCPLIFE;
  }

  const release = Deno.osRelease();
  const modules = `/lib/modules/${release}`;
  // bcc includes linux/kconfig.h from build/ or, on Debian's split packages, source/.
  const kconfig = ["build", "source"].map((d) => `${modules}/${d}/include/linux/kconfig.h`);
  if (kconfig.some((path) => isFile(path))) return { command };
  const arch = (await sh("dpkg --print-architecture")).out || "amd64";
  const findHeaders = () =>
    [...Deno.readDirSync("/usr/src")]
      .map((e) => e.name)
      .filter((n) => n.startsWith("linux-headers-") && n.endsWith(`-${arch}`))
      .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  let headers = findHeaders();
  if (headers.length === 0) {
    if (!install) {
      return { reason: `no kernel headers for ${release} (install linux-headers-${arch})` };
    }
    if (!(await aptInstall(`linux-headers-${arch}`, log))) {
      return { reason: `cannot install linux-headers-${arch} with apt-get` };
    }
    headers = findHeaders();
    if (headers.length === 0) {
      return { reason: `linux-headers-${arch} left no headers in /usr/src` };
    }
  }
  const build = `/usr/src/${headers.at(-1)}`;
  const common = build.replace(new RegExp(`-${arch}$`), "-common");
  Deno.mkdirSync(modules, { recursive: true });
  await Deno.remove(`${modules}/build`).catch(() => {});
  Deno.symlinkSync(build, `${modules}/build`);
  log(
    `linked ${modules}/build -> ${build} (headers of another kernel: tcplife's byte counts will be wrong, its costs hold)`,
  );
  try {
    Deno.statSync(common);
    await Deno.remove(`${modules}/source`).catch(() => {});
    Deno.symlinkSync(common, `${modules}/source`);
    log(`linked ${modules}/source -> ${common}`);
  } catch {
    // Single-directory header packages have no -common part.
  }
  return { command };
}

/**
 * The sock_ops close counter `make bench` builds (bench/sockops_counter.c).
 *
 * @returns the command to run, or the reason it cannot run
 */
export function prepareSockopsCounter(): Promise<{ command: string } | { reason: string }> {
  const command = new URL("../build/sockops_counter", import.meta.url).pathname;
  let reason: string | undefined;
  try {
    Deno.statSync(command);
  } catch {
    reason = `${command} is not built (make build/sockops_counter)`;
  }
  if (cgroup2Root() === undefined) reason = "no cgroup v2 is mounted for sock_ops";
  return Promise.resolve(reason === undefined ? { command } : { reason });
}

/**
 * Finds bpftrace for the bare counter, installing it when missing and allowed.
 *
 * @returns the command to run, or the reason the bare counter cannot run
 */
export async function prepareBpftrace(
  install: boolean,
  log: (line: string) => void,
): Promise<{ command: string } | { reason: string }> {
  const found = await sh("command -v bpftrace");
  if (found.ok) return { command: found.out.split("\n")[0] };
  if (!install) return { reason: "bpftrace is not installed (install bpftrace)" };
  if (!(await aptInstall("bpftrace", log))) {
    return { reason: "cannot install bpftrace with apt-get" };
  }
  return { command: "bpftrace" };
}
