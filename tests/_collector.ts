/**
 * Test helper: the reference collector (`main.ts collector`) as a subprocess,
 * so a test can kill it and start it again on the same database and address.
 *
 * @module
 */
import { DatabaseSync } from "node:sqlite";
import { readLines, waitForLine } from "./_agent.ts";
import { uniqueLoopbackAddress } from "./_traffic.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** The collector's start line, in either log format: `collector listening on <url>`. */
const LISTENING = /collector listening on (https?:\/\/[^\s"]+)/;

/** Where a collector listens. */
export interface CollectorAddress {
  hostname: string;
  /** 0: the kernel picks a free port, which the collector logs. */
  port: number;
}

/** Options of {@linkcode CollectorProcess.start}. */
export interface CollectorStart {
  /**
   * Where to listen; default port 0 on a loopback address of its own. Pass the `address` of a
   * collector that was killed to start it again where its exporters send.
   */
  address?: CollectorAddress;
  /** More `collector` options, after the test's defaults (`--hold-seconds 20`). */
  args?: string[];
  /** Environment variables besides the test's (`FLOWEXPORTER_COLLECTOR_CONFIG` empty: no file). */
  env?: Record<string, string>;
}

/** A collector process storing into `db`, at the address it logged. */
export class CollectorProcess implements AsyncDisposable {
  /** The address it listens on, with the port it was given. */
  readonly address: CollectorAddress;
  /** Base URL, `http://127.a.b.c:port`, from its `collector listening on <url>` line. */
  readonly url: string;
  readonly db: string;
  /** Its stderr so far, one entry a line. */
  readonly stderrLines: string[];
  #child: Deno.ChildProcess;
  #done: Promise<void>;

  private constructor(
    child: Deno.ChildProcess,
    db: string,
    stderrLines: string[],
    done: Promise<void>,
    url: string,
  ) {
    this.#child = child;
    this.db = db;
    this.stderrLines = stderrLines;
    this.#done = done;
    this.url = url;
    const { hostname, port } = new URL(url);
    this.address = { hostname: hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(port) };
  }

  /** Its process ID, to read its memory from `/proc/<pid>/status`. */
  get pid(): number {
    return this.#child.pid;
  }

  /** URL exporters post batches to. */
  get batchesUrl(): string {
    return `${this.url}/v1/batches`;
  }

  /** Starts a collector and waits until it logs the URL it listens on. */
  static async start(db: string, options: CollectorStart = {}): Promise<CollectorProcess> {
    const { hostname, port } = options.address ?? { hostname: uniqueLoopbackAddress(), port: 0 };
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        MAIN,
        "collector",
        ...["--listen", `${host}:${port}`, "--db", db, "--hold-seconds", "20"],
        ...options.args ?? [],
      ],
      env: { FLOWEXPORTER_COLLECTOR_CONFIG: "", ...options.env },
      stdout: "null",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    const lines: string[] = [];
    const done = readLines(child.stderr, (line) => lines.push(line));
    let exited = false;
    child.status.then(() => exited = true);
    let listening: string;
    try {
      listening = await waitForLine("Collector", lines, LISTENING, () => exited, 20_000);
    } catch (error) {
      child.kill("SIGKILL");
      await child.status;
      await done;
      throw error;
    }
    const url = LISTENING.exec(listening)![1];
    return new CollectorProcess(child, db, lines, done, url);
  }

  /** Stored flows matching `query` (the GET /v1/flows filters). */
  async flows(query: Record<string, string>): Promise<Record<string, unknown>[]> {
    const res = await fetch(
      `${this.url}/v1/flows?${new URLSearchParams({ limit: "0", ...query })}`,
    );
    if (!res.ok) throw new Error(`GET /v1/flows: ${res.status} ${await res.text()}`);
    return await res.json();
  }

  /** Kills the collector without warning (SIGKILL). */
  async kill(): Promise<void> {
    await this.stop("SIGKILL");
  }

  /** Stops the collector (SIGTERM by default); returns its exit code. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.#child.kill(signal);
    } catch {
      // already gone
    }
    const status = await this.#child.status;
    await this.#done;
    return status.code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Sum of a loss counter over the batches a collector stored (read straight from SQLite). */
export function storedLoss(db: string, column: "spool_evictions" | "kernel_drops"): number {
  const conn = new DatabaseSync(db, { readOnly: true });
  try {
    const row = conn.prepare(`SELECT COALESCE(SUM(${column}), 0) AS n FROM batches`).get() as {
      n: number;
    };
    return Number(row.n);
  } finally {
    conn.close();
  }
}
