/**
 * The sweep against the real kernel. A socket whose close and destroy no program ran for (here:
 * the capture's programs were detached while it closed, as the kernel now and then skips them)
 * left its state in the pinned `flows` map. The next agent's sweep records it once, from that
 * state: its ports, direction, start and workload, ending when it was last seen open (by the first
 * agent's last pass: its time is pinned with the capture). Sockets still open, and sockets whose
 * close was seen, are never swept. The agent process sweeps at its start, so such a close while
 * no agent ran is recorded by the next one. Tests run side by side, and the capture follows their
 * sockets too: only this test's sockets are counted.
 */
import assert from "node:assert/strict";
import { Agent, ownCapture, RetiringCapture } from "../ffi/agent.ts";
import { decodeFlows, RECORD_SIZE } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { AgentProcess, kernelTest, setIp, socketRecord, stopLine } from "./_agent.ts";
import { HeldConnection, lowerBoundNs, uniqueLoopbackAddress, upperBoundNs } from "./_traffic.ts";

const BOOT_ID = new Uint8Array(16);
const DEADLINE_MS = 30_000;
const WORKLOAD = "spiffe://test/sweep-server";

/** Opens a connection on `listener` and has each side send the other a payload of its own. */
async function openHeld(listener: Deno.Listener, host: string, i: number): Promise<HeldConnection> {
  const held = await HeldConnection.open(listener, host);
  await held.talk(1000 + i, 3000 + i);
  return held;
}

/** The records of `held`'s two ends among `records`: client's, then server's. */
function endsOf(records: FlowRecord[], held: HeldConnection): [FlowRecord[], FlowRecord[]] {
  const end = (local: number, remote: number) =>
    records.filter((r) => r.localPort === local && r.remotePort === remote);
  return [end(held.clientPort, held.serverPort), end(held.serverPort, held.clientPort)];
}

/** Reads the agent's ring once, then until `until(records)` holds, or fails after the deadline. */
async function readRing(
  agent: Agent,
  until: (records: FlowRecord[]) => boolean,
  what: string,
): Promise<FlowRecord[]> {
  const offsetNs = agent.clockReading().offsetNs;
  const buffer = new Uint8Array(1024 * RECORD_SIZE);
  const records: FlowRecord[] = [];
  const deadline = performance.now() + DEADLINE_MS;
  do {
    if (performance.now() > deadline) assert.fail(`Timed out waiting for ${what}`);
    const { bytes, position } = await agent.poll(buffer, 50);
    records.push(...decodeFlows(buffer.slice(0, bytes), offsetNs, BOOT_ID));
    agent.commit(position);
  } while (!until(records));
  return records;
}

/**
 * Detaches the programs of the capture pinned under `pinDir`, keeping its maps: its links are
 * unpinned, and the kernel has released them when this returns (as an upgrade retires a capture).
 */
function detachPrograms(pinDir: string): void {
  const capture = ownCapture(pinDir);
  RetiringCapture.open(capture).close();
  assert.deepEqual(
    [...Deno.readDirSync(capture)].filter((e) => e.name.startsWith("link_")),
    [],
    "no link left pinned",
  );
}

/** Wall-clock bounds around a call. */
interface Bounds {
  beforeNs: bigint;
  afterNs: bigint;
}

function assertSwept(
  seen: FlowRecord[],
  held: HeldConnection,
  side: "client" | "server",
  workload: string,
  lastSeenOpen: Bounds,
): void {
  const what = `the ${side} end of ${held.clientPort}`;
  assert.equal(seen.length, 1, `one record of ${what}`);
  const r = seen[0];
  assert.equal(r.closeSeenBy, "sweep", what);
  assert.equal(r.recordKind, "final", what);
  assert.equal(r.closeState, "UNKNOWN", what);
  assert.equal(r.end, "unknown", what);
  assert.equal(r.direction, side === "client" ? "outbound" : "inbound", what);
  assert.equal(r.localWorkloadId, workload, what);
  assert.ok(r.tStartNs >= held.beforeNs && r.tStartNs <= held.establishedNs, `${what}: its start`);
  // Open at the first agent's last pass (pinned with the capture), and closed after it.
  assert.ok(
    r.tEndNs >= lastSeenOpen.beforeNs && r.tEndNs <= lastSeenOpen.afterNs,
    `${what}: ends when the last pass saw it open`,
  );
  // Counters are read from the socket's memory if the kernel has not reused it yet, else zero.
  const [sent, received] = side === "client"
    ? [held.serverRead, held.clientRead]
    : [held.clientRead, held.serverRead];
  if (r.segsIn === 0) {
    assert.deepEqual(
      [r.bytesSent, r.bytesAcked, r.bytesReceived, r.segsOut, r.srttUs],
      [0, 0, 0, 0, 0],
      `${what}: counters unknown, all zero`,
    );
  } else {
    assert.equal(r.bytesSent - r.bytesRetrans, sent, `${what}: bytes sent`);
    assert.equal(r.bytesAcked, sent, `${what}: bytes acked`);
    assert.equal(r.bytesReceived, received, `${what}: bytes received`);
  }
}

kernelTest("the sweep records, once, each socket whose close no program saw", async () => {
  const host = uniqueLoopbackAddress();
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  const listener = Deno.listen({ hostname: host, port: 0 });
  const held: HeldConnection[] = [];
  try {
    // The first agent's last pass: the one that last saw the connections open.
    const lastSeenOpen: Bounds = { beforeNs: 0n, afterNs: 0n };
    const first = Agent.open({ pinDir, noSeed: true });
    try {
      await setIp(pinDir, host, WORKLOAD);
      for (let i = 0; i < 5; i++) held.push(await openHeld(listener, host, i));
      await first.sweep();
      // A close seen by sock_ops: its record comes from there, and the sweep leaves it alone.
      await held[0].close();
      await first.sweep();
      const seen = await readRing(
        first,
        (rs) => endsOf(rs, held[0]).every((end) => end.length === 1),
        "the records of the close sock_ops saw",
      );
      lastSeenOpen.beforeNs = lowerBoundNs();
      await first.sweep();
      lastSeenOpen.afterNs = upperBoundNs();
      seen.push(...await readRing(first, () => true, "the ring"));
      for (const end of endsOf(seen, held[0])) {
        assert.equal(end.length, 1, "a close seen is recorded once");
        assert.equal(end[0].closeSeenBy, "sock_ops");
      }
      for (const h of held.slice(1)) {
        assert.deepEqual(endsOf(seen, h), [[], []], "open sockets are not swept");
      }
    } finally {
      first.close();
    }

    // Closes no program sees: the pinned maps keep the states, and nothing records them.
    detachPrograms(pinDir);
    await held[1].close();
    await held[2].close();
    // Short connections meanwhile let the kernel reuse the closed sockets' memory, or not.
    for (let i = 0; i < 50; i++) await (await openHeld(listener, host, i)).close();

    const second = Agent.open({ pinDir, noSeed: true });
    try {
      assert.ok(second.stats().resumed, "the second agent resumed the pinned capture");
      const records = await second.sweep();
      assert.ok(records >= 4, `the sweep recorded the two connections' four ends (${records})`);
      assert.equal(second.stats().swept, BigInt(records), "the stats count what was swept");
      const swept = await readRing(
        second,
        (rs) => held.slice(1, 3).every((h) => endsOf(rs, h).every((end) => end.length > 0)),
        "the swept records",
      );
      for (const h of held.slice(1, 3)) {
        const [client, server] = endsOf(swept, h);
        assertSwept(client, h, "client", "", lastSeenOpen);
        assertSwept(server, h, "server", WORKLOAD, lastSeenOpen);
      }
      await second.sweep();
      for (const h of held.slice(3)) {
        assert.deepEqual(endsOf(swept, h), [[], []], "open sockets are not swept");
      }
      // Still followed across the restart: their closes are seen.
      await held[3].close();
      await held[4].close();
      const later = await readRing(
        second,
        (rs) => held.slice(3).every((h) => endsOf(rs, h).every((end) => end.length === 1)),
        "the records of the later closes",
      );
      await second.sweep();
      later.push(...await readRing(second, () => true, "the ring"));
      for (const h of held.slice(3)) {
        for (const end of endsOf(later, h)) {
          assert.equal(end.length, 1, "a close seen is recorded once");
          assert.equal(end[0].closeSeenBy, "sock_ops");
        }
      }
      for (const h of held.slice(1, 3)) {
        assert.deepEqual(endsOf(later, h), [[], []], "a swept socket is swept once");
      }
    } finally {
      second.close();
    }
  } finally {
    listener.close();
    for (const h of held) {
      for (const conn of [h.client, h.server]) {
        try {
          conn.close();
        } catch {
          // closed already
        }
      }
    }
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
  }
});

kernelTest(
  "the agent sweeps at start: a close no program saw while it was away is recorded",
  async () => {
    const host = uniqueLoopbackAddress();
    const listener = Deno.listen({ hostname: host, port: 0 });
    const first = await AgentProcess.start();
    let second: AgentProcess | undefined;
    try {
      const held = await openHeld(listener, host, 0);
      assert.equal(await first.stop({ keep: true }), 0);
      detachPrograms(first.pinDir);
      await held.close();
      second = await first.restart();
      const ends = [
        socketRecord(held.clientPort, held.serverPort),
        socketRecord(held.serverPort, held.clientPort),
      ];
      const swept = await second.waitForRecords((r) => ends.some((end) => end(r)), 2);
      assert.equal(swept.length, 2, "one record of each end");
      for (const r of swept) {
        assert.equal(r.close_seen_by, "sweep");
        assert.equal(r.end, "unknown");
      }
      assert.match(
        second.stderrLines.join("\n"),
        /recorded \d+ closed sockets whose close and destroy/,
      );
      assert.equal(await second.stop(), 0);
      assert.ok(stopLine(second).swept >= 2, `${stopLine(second).swept} swept`);
    } finally {
      listener.close();
      await first.stop();
      await second?.stop();
    }
  },
);
