/**
 * Test helpers for kernel tests: run the real agent (`main.ts run`) as a
 * subprocess against this machine's kernel and collect its records.
 *
 * @module
 */
import { type FlowJson, parseFlowJson } from "../lib/json_lines.ts";
import { openNative, Probe } from "../ffi/symbols.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** True when this process may load BPF programs. */
export const IS_ROOT = Deno.uid() === 0;

/**
 * A test that needs the kernel. Without root it is skipped on a developer's
 * machine, but under CI it runs (and fails): a skipped kernel test proves nothing.
 */
export function kernelTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  Deno.test({ name, ignore: !IS_ROOT && !Deno.env.get("CI"), fn });
}

/** True when this kernel lets the agent make sock_ops follow seeded sockets (Linux 6.13+). */
export function canFollowSeeded(): boolean {
  return (openNative().fe_probe() & Probe.sockopsFollow) !== 0;
}

/**
 * The counters of a stopped agent's stop line: records, kernel drops, recursion misses, records
 * made at destroy or by the sweep, and how many of those were of sockets nobody followed, and
 * swept.
 */
export function stopLine(agent: AgentProcess): {
  records: number;
  drops: number;
  misses: number;
  recovered: number;
  unfollowed: number;
  swept: number;
} {
  const text = agent.stderrLines.join("\n");
  const m =
    /stopped \(records (\d+), kernel drops (\d+), recursion misses (\d+), recovered at destroy or by the sweep (\d+) \((\d+) of them nobody followed, (\d+) swept\)/
      .exec(text);
  if (!m) throw new Error(`No stop line with records, drops, misses and recoveries:\n${text}`);
  const [records, drops, misses, recovered, unfollowed, swept] = m.slice(1).map(Number);
  return { records, drops, misses, recovered, unfollowed, swept };
}

/** A running agent and the records it printed so far. */
export class AgentProcess implements AsyncDisposable {
  readonly records: FlowJson[] = [];
  readonly stderrLines: string[] = [];
  readonly pinDir: string;
  /** Temporary directory of this agent: lock file, spool. */
  readonly workDir: string;
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<void>;
  readonly #status: Promise<Deno.CommandStatus>;
  #exited = false;
  #killed = false;

  private constructor(child: Deno.ChildProcess, pinDir: string, workDir: string) {
    this.#child = child;
    this.pinDir = pinDir;
    this.workDir = workDir;
    this.#status = child.status;
    this.#status.then(() => this.#exited = true);
    this.#done = Promise.all([
      readLines(child.stdout, (line) => this.records.push(parseFlowJson(line))),
      readLines(child.stderr, (line) => this.stderrLines.push(line)),
    ]).then(() => {});
  }

  /**
   * Starts `flowexporter run` with extra flags and waits until it captures.
   * Each agent gets its own pin directory so tests never share identity maps.
   */
  static async start(
    flags: string[] = [],
    env: Record<string, string> = {},
    workDirOfRestart?: string,
  ): Promise<AgentProcess> {
    const has = (flag: string) => flags.includes(flag);
    const pinDir = has("--pin-dir")
      ? flags[flags.indexOf("--pin-dir") + 1]
      : `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
    const workDir = workDirOfRestart ?? await Deno.makeTempDir({ prefix: "flowexporter-agent-" });
    // Each agent has its own maps, lock, spool and certificate path: tests run side by side.
    const args = [
      ...flags,
      ...(has("--pin-dir") ? [] : ["--pin-dir", pinDir]),
      ...(has("--lock-file") ? [] : ["--lock-file", `${workDir}/lock`]),
      ...(has("--spool-dir") ? [] : ["--spool-dir", `${workDir}/spool`]),
      ...(has("--cert-path") ? [] : ["--cert-path", `${workDir}/no-identity.pem`]),
      // The tests read the records from stdout, with or without a collector.
      ...(has("--output") ? [] : ["--output", "json"]),
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", MAIN, "run", ...args],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
      env: { FLOWEXPORTER_CONFIG: "", ...env },
    }).spawn();
    const agent = new AgentProcess(child, pinDir, workDir);
    try {
      await agent.waitForLog(/capturing TCP flows/, 30_000);
    } catch (error) {
      // Never leave a capture attached behind a failed start.
      await agent.stop();
      throw error;
    }
    return agent;
  }

  /** The agent's process ID (its /proc entry). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Waits until a stderr line matches; throws with the log when the agent exits or time runs out. */
  waitForLog(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return waitForLine("Agent", this.stderrLines, pattern, () => this.#exited, timeoutMs);
  }

  /** Waits until `count` records satisfy `match`, returning them. */
  async waitForRecords(
    match: (r: FlowJson) => boolean,
    count: number,
    timeoutMs = 10_000,
  ): Promise<FlowJson[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.records.filter(match);
      if (found.length >= count) {
        // Give a duplicate, if there were one, the chance to show up.
        await delay(300);
        return this.records.filter(match);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `Expected ${count} matching records, got ${found.length}; log:\n${
            this.stderrLines.join("\n")
          }`,
        );
      }
      await delay(20);
    }
  }

  /**
   * Sends SIGTERM and waits for the exit; returns the exit code. Then ends the capture the agent
   * left pinned (removing its pin directory) and removes its work directory, unless `keep` asks
   * for both to stay for a restart.
   */
  async stop(options: { keep?: boolean; signal?: Deno.Signal } = {}): Promise<number> {
    if (!this.#exited && !this.#killed) {
      this.#killed = true;
      this.#child.kill(options.signal ?? "SIGTERM");
    }
    const status = await this.#status;
    await this.#done;
    if (!options.keep) {
      await Deno.remove(this.pinDir, { recursive: true }).catch(() => {});
      await Deno.remove(this.workDir, { recursive: true }).catch(() => {});
    }
    return status.code;
  }

  /**
   * Starts another agent on this one's pin directory, spool and lock file (stop this one with
   * `keep` first): a restart. The new agent owns the directories and removes them at its stop.
   */
  restart(flags: string[] = []): Promise<AgentProcess> {
    return AgentProcess.start(
      [
        ...flags,
        ...["--pin-dir", this.pinDir, "--spool-dir", `${this.workDir}/spool`],
        ...["--lock-file", `${this.workDir}/lock`],
      ],
      {},
      this.workDir,
    );
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Hands each non-empty line of a process's output to `onLine`; resolves at its end. */
export async function readLines(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) if (line) onLine(line);
  }
}

/**
 * Waits until one of `lines` (filled as a process logs) matches `pattern`; throws with the lines
 * when the process exited or time runs out.
 *
 * @param who the process, for the error: `Agent`, `Collector`
 */
export async function waitForLine(
  who: string,
  lines: string[],
  pattern: RegExp,
  exited: () => boolean,
  timeoutMs: number,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = lines.find((l) => pattern.test(l));
    if (line) return line;
    if (Date.now() > deadline || exited()) {
      throw new Error(`${who} did not log ${pattern}; its log:\n${lines.join("\n")}`);
    }
    await delay(20);
  }
}

/** Maps `ip` to `workload` in the agent's pinned IP map, as a host agent would. */
export async function setIp(pinDir: string, ip: string, workload: string): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "identity", "set-ip", ip, workload, "--pin-dir", pinDir],
  }).output();
  if (out.code !== 0) {
    throw new Error(`identity set-ip ${ip} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Matches the record of the local socket with this local and remote port. */
export function socketRecord(localPort: number, remotePort: number): (r: FlowJson) => boolean {
  return (r) => r.local_port === localPort && r.remote_port === remotePort;
}
