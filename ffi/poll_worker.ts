/**
 * The poll worker: the only place that blocks on the kernel. Each poll copies
 * many records into one buffer; whole buffers go to the main thread as
 * transferred ArrayBuffers. Protocol: see ffi/flow_source.ts.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { openNative } from "./symbols.ts";

/** First message from the main thread. */
export interface PollStart {
  libPath: string;
  handle: bigint;
  bufferBytes: number;
  timeoutMs: number;
}

/** Messages to the main thread. */
export type PollMessage =
  | { kind: "records"; bytes: ArrayBuffer; position: bigint }
  | { kind: "idle" }
  | { kind: "error"; message: string }
  | { kind: "stopped" };

let stopping = false;

async function pollLoop(start: PollStart): Promise<void> {
  const native = openNative([start.libPath]);
  const handle = Deno.UnsafePointer.create(start.handle);
  if (handle === null) throw new Error("Cannot poll: the agent handle is null");
  const buf = new Uint8Array(start.bufferBytes);
  const position = new BigUint64Array(1);
  const recordSize = native.fe_record_size();
  let lastMessage = performance.now();
  let full = false;
  for (;;) {
    const last = stopping;
    // After a full buffer, or for the final pass, drain again without waiting.
    const timeoutMs = last || full ? 0 : start.timeoutMs;
    const n = await native.fe_poll(handle, timeoutMs, buf, buf.length, position);
    full = n + recordSize > buf.length;
    if (n < 0) throw new Error(`Cannot poll the flow buffer: errno ${-n}`);
    if (n > 0) {
      const bytes = buf.slice(0, n).buffer;
      self.postMessage(
        { kind: "records", bytes, position: position[0] } satisfies PollMessage,
        [bytes],
      );
      lastMessage = performance.now();
    } else if (performance.now() - lastMessage >= 1000) {
      // A heartbeat on an idle host, so the main thread can tell a live worker from a stuck one.
      self.postMessage({ kind: "idle" } satisfies PollMessage);
      lastMessage = performance.now();
    }
    // After stop(), drain until a pass comes back with room to spare.
    if (last && !full) break;
  }
}

self.onmessage = (event: MessageEvent<PollStart | "stop">) => {
  if (event.data === "stop") {
    stopping = true;
    return;
  }
  pollLoop(event.data).then(
    () => self.postMessage({ kind: "stopped" } satisfies PollMessage),
    (err: Error) => self.postMessage({ kind: "error", message: err.message } satisfies PollMessage),
  );
};
