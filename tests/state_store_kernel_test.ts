/**
 * The per-socket state store against the real kernel: more sockets open at once than `slots`
 * holds, so that most of their states spill to `flows`. Each socket end still gets one record at
 * close, followed from its handshake, and both stores give every state back once the sockets are
 * gone. sock_ops follows a cgroup of the test's own, so that the other tests' sockets (which the
 * tracepoints still see, each for a moment at its close) take few places in the small maps.
 */
import assert from "node:assert/strict";
import { Agent } from "../ffi/agent.ts";
import { cgroup2Root } from "../ffi/kernel_prereqs.ts";
import { decodeFlows, RECORD_SIZE } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { kernelTest } from "./_agent.ts";
import { headerDefines, headerStructOffsets } from "./_c_source.ts";
import { ConnectionHolder, lowerBoundNs, uniqueLoopbackAddress, upperBoundNs } from "./_traffic.ts";

/** The capture's flows_max: `slots` gets half of it (a power of two), `flows` all of it. */
const FLOWS_MAX = 256;
const SLOTS = 128;
/** 200 socket ends open at once: at least 72 of them in `flows`, where none is evicted. */
const CONNECTIONS = 100;
const BOOT_ID = new Uint8Array(16);
const DEADLINE_MS = 30_000;
/** Offsets in struct fe_slot, read from bpf/flowexporter.h. */
const { cookie: SLOT_COOKIE, spilled: SLOT_SPILLED } = headerStructOffsets("fe_slot");
const { SLOT_BUSY, CONNECTION_SHIFT } = headerDefines("FE_");
/** A slot's cookie while its state is written. */
const BUSY = BigInt(SLOT_BUSY);
/** A record's ID is the socket's cookie, with its connection count from this bit up. */
const COOKIE_BITS = BigInt(CONNECTION_SHIFT);
/** The other tests' sockets pass through the maps: how long to wait for a moment without any. */
const SETTLE_MS = 5_000;

function dotted(ip: Uint8Array): string {
  return ip.join(".");
}

kernelTest("states that spill from slots to flows give the same records, once each", async () => {
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  const host = uniqueLoopbackAddress();
  const root = cgroup2Root();
  assert.ok(root, "cgroup v2 is mounted");
  const cgroup = `${root}/${pinDir.split("/").pop()}`;
  await Deno.mkdir(cgroup);
  try {
    using agent = Agent.open({
      pinDir,
      cgroupPath: cgroup,
      noPin: true,
      noSeed: true,
      flowsMax: FLOWS_MAX,
    });
    using slots = agent.openMap("slots");
    using flows = agent.openMap("flows");
    assert.equal(slots.maxEntries, SLOTS);
    const slotKey = (i: number) => new Uint8Array(new Uint32Array([i]).buffer);
    const slotAt = (i: number) => new DataView(slots.lookup(slotKey(i))!.buffer);
    const flowsKeys = () =>
      [...flows.keys()].map((k) => new DataView(k.buffer).getBigUint64(0, true));
    /**
     * Each slot's spill count is what flows holds of it, once no other socket is on its way
     * (the other tests' sockets pass through the maps); resolves to the counts.
     */
    const spillsMatchFlows = async (): Promise<number[]> => {
      const settleBy = performance.now() + SETTLE_MS;
      for (;;) {
        const before = flowsKeys();
        const spilled = Array.from(
          { length: SLOTS },
          (_, i) => slotAt(i).getUint32(SLOT_SPILLED, true),
        );
        const after = flowsKeys();
        const inFlows = new Array<number>(SLOTS).fill(0);
        for (const cookie of after) inFlows[Number(cookie % BigInt(SLOTS))]++;
        const stable = before.length === after.length && before.every((c, i) => c === after[i]);
        if (stable && spilled.every((n, i) => n === inFlows[i])) return spilled;
        if (performance.now() > settleBy) {
          assert.deepEqual(spilled, inFlows, "each slot counts the states it has in flows");
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    const clockOffsetNs = agent.clockReading().offsetNs;
    const beforeNs = lowerBoundNs();
    {
      // Another process holds them, then closes them all.
      await using _held = await ConnectionHolder.start(host, 4, CONNECTIONS, cgroup);
      assert.ok(
        flows.count() >= 2 * CONNECTIONS - SLOTS,
        `the states beyond the slots are in flows (${flows.count()})`,
      );
      const spilled = (await spillsMatchFlows()).reduce((sum, n) => sum + n, 0);
      assert.ok(spilled >= 2 * CONNECTIONS - SLOTS, `the slots count ${spilled} spilled states`);
    }
    const afterNs = upperBoundNs();

    const records = new Map<bigint, FlowRecord>();
    const buffer = new Uint8Array(1024 * RECORD_SIZE);
    const deadline = performance.now() + DEADLINE_MS;
    while (records.size < 2 * CONNECTIONS) {
      if (performance.now() > deadline) {
        assert.fail(`Timed out: ${records.size} of ${2 * CONNECTIONS} records`);
      }
      const { bytes, position } = await agent.poll(buffer, 50);
      for (const flow of decodeFlows(buffer.slice(0, bytes), clockOffsetNs, BOOT_ID)) {
        if (dotted(flow.localIp) !== host && dotted(flow.remoteIp) !== host) continue;
        assert.ok(!records.has(flow.cookie), `one record of socket ${flow.cookie}`);
        records.set(flow.cookie, flow);
      }
      agent.commit(position);
    }
    for (const flow of records.values()) {
      assert.equal(flow.seeded, false, "followed from its handshake");
      assert.notEqual(flow.direction, "unknown");
      assert.ok(
        beforeNs <= flow.tStartNs && flow.tStartNs <= flow.tEndNs,
        "started at its handshake",
      );
      assert.ok(flow.tEndNs <= afterNs);
    }
    const outbound = [...records.values()].filter((flow) => flow.direction === "outbound");
    assert.equal(outbound.length, CONNECTIONS);

    // Each destroy gave its state back: none of these sockets holds a slot or an entry of flows.
    const ours = new Set([...records.keys()].map((id) => id & ((1n << COOKIE_BITS) - 1n)));
    for (let i = 0; i < SLOTS; i++) {
      const held = slotAt(i).getBigUint64(SLOT_COOKIE, true) & ~BUSY;
      assert.ok(!ours.has(held), `slot ${i} gave back socket ${held}`);
    }
    for (const cookie of flowsKeys()) assert.ok(!ours.has(cookie), `flows gave back ${cookie}`);

    // And no spill count is left over.
    await spillsMatchFlows();
  } finally {
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    await Deno.remove(cgroup);
  }
});
