/**
 * The per-socket state store against the real kernel: more sockets open at once than `slots`
 * holds, so that most of their states spill to `flows`. Each socket end still gets one record at
 * close, followed from its handshake, and both stores are empty once the sockets are gone.
 */
import assert from "node:assert/strict";
import { Agent } from "../ffi/agent.ts";
import { decodeFlows, RECORD_SIZE } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { kernelTest } from "./_agent.ts";
import { ConnectionHolder, lowerBoundNs, uniqueLoopbackAddress, upperBoundNs } from "./_traffic.ts";

/** The capture's flows_max: `slots` gets half of it (a power of two), `flows` all of it. */
const FLOWS_MAX = 256;
const SLOTS = 128;
/** 200 socket ends open at once: at least 72 of them in `flows`, where none is evicted. */
const CONNECTIONS = 100;
const BOOT_ID = new Uint8Array(16);
const DEADLINE_MS = 30_000;
/** Offsets in struct fe_slot (bpf/flowexporter.h). */
const SLOT_COOKIE = 0;
const SLOT_SPILLED = 8;

function dotted(ip: Uint8Array): string {
  return ip.join(".");
}

kernelTest("states that spill from slots to flows give the same records, once each", async () => {
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  const host = uniqueLoopbackAddress();
  try {
    using agent = Agent.open({
      pinDir,
      cgroupPath: "auto",
      noPin: true,
      noSeed: true,
      flowsMax: FLOWS_MAX,
    });
    using slots = agent.openMap("slots");
    using flows = agent.openMap("flows");
    assert.equal(slots.maxEntries, SLOTS);
    const clockOffsetNs = agent.clockReading().offsetNs;
    const beforeNs = lowerBoundNs();
    {
      // Another process holds them, then closes them all.
      await using _held = await ConnectionHolder.start(host, 4, CONNECTIONS);
      assert.ok(
        flows.count() >= 2 * CONNECTIONS - SLOTS,
        `the states beyond the slots are in flows (${flows.count()})`,
      );
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

    // Each destroy gave its state back: no slot held, no spill left counted, nothing in flows.
    const key = new Uint8Array(4);
    const keyView = new DataView(key.buffer);
    for (let i = 0; i < SLOTS; i++) {
      keyView.setUint32(0, i, true);
      const slot = new DataView(slots.lookup(key)!.buffer);
      assert.equal(slot.getBigUint64(SLOT_COOKIE, true), 0n, `slot ${i} is free`);
      assert.equal(slot.getUint32(SLOT_SPILLED, true), 0, `slot ${i} counts no spill`);
    }
    assert.equal(flows.count(), 0);
  } finally {
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
  }
});
