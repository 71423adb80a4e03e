/**
 * The agent's memory under sustained churn stays within what its design allows: 30 s at
 * 20 000 flows/s with one-minute windows, peak RSS (VmHWM from /proc) under a bound computed
 * from the design, not from a measurement (docs/benchmarks.md, "Memory").
 */
import assert from "node:assert/strict";
import { AgentProcess, kernelTest } from "./_agent.ts";
import { runChurn, tally } from "./_traffic.ts";
import { spooledSockets } from "./_spool_files.ts";
import { DEFAULT_RING_BYTES } from "../lib/capture_sizes.ts";
import { CHUNK_BYTES } from "../lib/batcher.ts";
import { RECORD_SIZE } from "../lib/decode.ts";
import { POLL_RECORDS } from "../ffi/flow_source.ts";
import { flowBufferBound } from "../lib/encoded_flows.ts";
import { RecordWriter } from "../lib/wire.ts";

const MiB = 1024 * 1024;
/** The window's byte cap for this test: windows close on it every few seconds at this rate. */
const BATCH_MAX_BYTES = 4 * MiB;
/** Bytes one poll drains into. */
const POLL_BUFFER = POLL_RECORDS * RECORD_SIZE;
/** The intake's buffer of one poll's flows, encoded. */
const FLOW_BUFFER = flowBufferBound(
  POLL_RECORDS,
  new RecordWriter(new Uint8Array(RECORD_SIZE), 0n, new Uint8Array(16)).room,
);
/**
 * V8's young generation at its defaults on 64-bit hosts: two semi-spaces of at most 16 MiB
 * each, filled by the short-lived objects of each poll before a scavenge empties them.
 */
const YOUNG_GENERATION = 32 * MiB;

function status(pid: number, field: "VmRSS" | "VmHWM"): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(text)![1]) * 1024;
}

/** The churn grid, of this test's own. */
const GRID = { firstAddr: "127.79.7.1", addrs: 2, portBase: 22600, ports: 2 };

kernelTest("30 s at 20 000 flows/s: peak RSS stays under the design's bound", async () => {
  const agent = await AgentProcess.start([
    "--output",
    "none",
    "--batch-interval",
    "1m",
    "--batch-max-bytes",
    `${BATCH_MAX_BYTES}`,
  ]);
  try {
    // At start the runtime, the modules and the whole ring buffer (mapped in at once) are in.
    // The high-water mark holds them all: once started, the agent gives back the pages of its
    // executable that only starting read, and the churn reads some of them back.
    const started = status(agent.pid, "VmHWM");
    // The open window and the one being sealed hold at most the byte cap each (compressed, so
    // less), plus the poll buffer, the poll's encoded flows, the encoding chunk and V8's young
    // generation.
    const bound = started + 2 * BATCH_MAX_BYTES + POLL_BUFFER + FLOW_BUFFER + CHUNK_BYTES +
      YOUNG_GENERATION;
    const churn = await runChurn(GRID, { seconds: 30, rate: 10_000 }); // 2 sockets each
    const peak = status(agent.pid, "VmHWM");
    assert.equal(await agent.stop({ keep: true }), 0);
    const stopLine = agent.stderrLines.find((l) => l.includes("stopped (")) ?? "";
    // What reached the ring after the agent's last drain is the next start's (the capture stays
    // pinned): not lost.
    const leftInRing = Number(/left in the ring (\d+)/.exec(stopLine)?.[1]);
    // The target is 600 000 sockets. A loaded CI host reaches less (298 000 once, with other
    // suites' benchmarks beside it); the bound holds at any rate, and a quarter of the target
    // still fills several batch frames a second.
    assert.ok(churn.sockets_closed > 150_000, `${churn.sockets_closed} sockets closed in 30 s`);
    // Every socket of the grid has its record, with no allowance for a loss: a close and a
    // destroy that no program saw are recorded by the sweep at stop (docs/capture.md, "The
    // sweep").
    const spooled = tally(await spooledSockets(GRID, `${agent.workDir}/spool`));
    const gridSpooled = spooled.server + spooled.client;
    assert.ok(
      gridSpooled + leftInRing >= churn.sockets_closed,
      `the spool holds ${JSON.stringify(spooled)} of the grid's ${churn.sockets_closed} sockets ` +
        `(${JSON.stringify(churn)}); the agent: ${stopLine}`,
    );
    const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
    console.log(
      `${Math.round(churn.sockets_closed / 30)} flows/s: started ${mib(started)} (ring ` +
        `${mib(DEFAULT_RING_BYTES)}), peak ${mib(peak)}, bound ${mib(bound)}; ` +
        `${gridSpooled} of the grid's ${churn.sockets_closed} sockets spooled, ` +
        `${leftInRing} records left in the ring for the next start`,
    );
    assert.ok(peak <= bound, `peak RSS ${mib(peak)} over the bound ${mib(bound)}`);
  } finally {
    await agent.stop();
  }
});
