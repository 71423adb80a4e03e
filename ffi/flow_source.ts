/**
 * The poll loop: drains raw records from an open {@linkcode Agent} and hands each batch to a
 * callback, on the main thread. The one blocking call, `fe_poll` waiting for the kernel, is a
 * nonblocking FFI symbol: it waits on Deno's blocking thread pool and resolves a promise, so no
 * Worker (and no second V8 isolate, with its heap and message copies) is needed. The polls that
 * drain on without waiting run on the main thread (`Agent.poll`).
 *
 * @module
 */
import type { Agent } from "./agent.ts";

/** Options of {@linkcode FlowSource}. */
export interface FlowSourceOptions {
  /** Bytes drained per poll (whole records). */
  bufferBytes?: number;
  /** Longest wait for a kernel wakeup before draining anyway, ms (bounds record latency). */
  timeoutMs?: number;
  /**
   * Called with each batch of raw `struct fe_flow` records and the ring position after them (0
   * with the perf buffer). The bytes are a view of the poll buffer, valid until the callback
   * returns: the next poll writes over them. The records stay in the ring buffer until the
   * caller passes that position to {@linkcode Agent.commit}.
   */
  onRecords: (bytes: Uint8Array, position: bigint) => void;
  /** Called after each poll that brought records, and at least once a second while idle. */
  onPoll?: () => void;
  /** Called once if polling fails. */
  onError?: (err: Error) => void;
}

/**
 * Records drained per poll unless `bufferBytes` says otherwise. A poll's records and their
 * encodings are held at once (this buffer, and the intake's, lib/encoded_flows.ts): 1024 records
 * (264 KiB) keep both small, and at 100 000 flows/s that is 100 polls a second. Flat out, polls
 * of 2048 and 4096 records left the agent's C heap about 2 and 3.5 MiB above that of the agent
 * whose journal held the kernel's records (docs/benchmarks.md); 1024, within noise of it.
 */
export const POLL_RECORDS = 1024;

/** How often an idle loop reports that it is alive, ms. */
const IDLE_HEARTBEAT_MS = 1000;

/** Raw records from the kernel, delivered in batches by a poll loop. */
export class FlowSource implements AsyncDisposable {
  readonly #stopped: Promise<void>;
  #stopping = false;

  /** Starts polling `agent`; stop with {@linkcode FlowSource.close} before closing the agent. */
  constructor(agent: Agent, options: FlowSourceOptions) {
    this.#stopped = this.#pollLoop(agent, options).catch((err: Error) => options.onError?.(err));
  }

  async #pollLoop(agent: Agent, options: FlowSourceOptions): Promise<void> {
    const recordSize = agent.recordSize;
    const buffer = new Uint8Array(options.bufferBytes ?? recordSize * POLL_RECORDS);
    const timeoutMs = options.timeoutMs ?? 100;
    let lastReport = performance.now();
    let full = false;
    for (;;) {
      const last = this.#stopping;
      // After a full buffer, or for the final pass, drain again without waiting.
      const { bytes, position } = await agent.poll(buffer, last || full ? 0 : timeoutMs);
      full = bytes + recordSize > buffer.length;
      if (bytes > 0 || performance.now() - lastReport >= IDLE_HEARTBEAT_MS) {
        options.onPoll?.();
        lastReport = performance.now();
      }
      if (bytes > 0) options.onRecords(buffer.subarray(0, bytes), position);
      // After close(), drain until a pass comes back with room to spare.
      if (last && !full) return;
    }
  }

  /** Drains what the kernel holds, then stops polling; safe to call twice. */
  async close(): Promise<void> {
    this.#stopping = true;
    await this.#stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
