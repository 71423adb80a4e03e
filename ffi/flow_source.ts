/**
 * Main-thread side of the poll worker: starts it on an open {@linkcode Agent}
 * and hands each batch of raw records to a callback.
 *
 * @module
 */
import type { Agent } from "./agent.ts";
import type { PollMessage, PollStart } from "./poll_worker.ts";
import { nativePath } from "./symbols.ts";

/** Options of {@linkcode FlowSource}. */
export interface FlowSourceOptions {
  /** Bytes the worker drains per poll (whole records). */
  bufferBytes?: number;
  /** Longest wait for a kernel wakeup before draining anyway, ms (bounds record latency). */
  timeoutMs?: number;
  /**
   * Called on the main thread with each batch of raw `struct fe_flow` records and the ring
   * position after them (0 with the perf buffer). The records stay in the ring buffer until
   * the caller passes that position to {@linkcode Agent.commit}.
   */
  onRecords: (bytes: Uint8Array, position: bigint) => void;
  /** Called on each message from the worker (records or an idle heartbeat, at least once a second). */
  onPoll?: () => void;
  /** Called once if the worker fails. */
  onError?: (err: Error) => void;
}

/** Raw records from the kernel, delivered in batches by a Worker. */
export class FlowSource implements AsyncDisposable {
  readonly #worker: Worker;
  readonly #stopped: Promise<void>;
  #closed = false;

  /** Starts polling `agent`; stop with {@linkcode FlowSource.close} before closing the agent. */
  constructor(agent: Agent, options: FlowSourceOptions) {
    this.#worker = new Worker(new URL("./poll_worker.ts", import.meta.url), { type: "module" });
    this.#stopped = new Promise((resolve) => {
      this.#worker.onmessage = (event: MessageEvent<PollMessage>) => {
        const msg = event.data;
        if (msg.kind === "records" || msg.kind === "idle") options.onPoll?.();
        if (msg.kind === "records") options.onRecords(new Uint8Array(msg.bytes), msg.position);
        else if (msg.kind === "stopped") resolve();
        else if (msg.kind === "error") {
          options.onError?.(new Error(msg.message));
          resolve();
        }
      };
      this.#worker.onerror = (event) => {
        event.preventDefault();
        options.onError?.(new Error(`Poll worker failed: ${event.message}`));
        resolve();
      };
    });
    this.#worker.postMessage(
      {
        libPath: nativePath() ?? "",
        handle: agent.handleValue,
        bufferBytes: options.bufferBytes ?? agent.recordSize * 4096,
        timeoutMs: options.timeoutMs ?? 100,
      } satisfies PollStart,
    );
  }

  /** Drains what the kernel holds, then stops the worker; safe to call twice. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#worker.postMessage("stop");
    }
    await this.#stopped;
    this.#worker.terminate();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
