/**
 * Test helper: the reference collector (`main.ts collector`) as a subprocess,
 * so a test can kill it and start it again on the same database and port.
 *
 * @module
 */
import { DatabaseSync } from "node:sqlite";
import { delay } from "./_agent.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** A collector process on 127.0.0.1:`port` storing into `db`. */
export class CollectorProcess implements AsyncDisposable {
  readonly port: number;
  readonly db: string;
  #child: Deno.ChildProcess;

  private constructor(child: Deno.ChildProcess, port: number, db: string) {
    this.#child = child;
    this.port = port;
    this.db = db;
  }

  /** URL exporters post batches to. */
  get batchesUrl(): string {
    return `http://127.0.0.1:${this.port}/v1/batches`;
  }

  /** Starts a collector and waits until it answers /healthz. */
  static async start(db: string, port = freePort()): Promise<CollectorProcess> {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        MAIN,
        "collector",
        "--listen",
        `127.0.0.1:${port}`,
        "--db",
        db,
        "--hold-seconds",
        "20",
      ],
      stdout: "null",
      stderr: "null",
      stdin: "null",
    }).spawn();
    const collector = new CollectorProcess(child, port, db);
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/healthz`);
        await res.body?.cancel();
        if (res.ok) return collector;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`Collector on port ${port} did not start`);
      await delay(50);
    }
  }

  /** Stored flows matching `query` (the GET /v1/flows filters). */
  async flows(query: Record<string, string>): Promise<Record<string, unknown>[]> {
    const res = await fetch(
      `http://127.0.0.1:${this.port}/v1/flows?${new URLSearchParams({ limit: "0", ...query })}`,
    );
    if (!res.ok) throw new Error(`GET /v1/flows: ${res.status} ${await res.text()}`);
    return await res.json();
  }

  /** Kills the collector without warning (SIGKILL). */
  async kill(): Promise<void> {
    this.#child.kill("SIGKILL");
    await this.#child.status;
  }

  /** Stops the collector (SIGTERM). */
  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await this.#child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** A loopback port nothing listens on right now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
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
