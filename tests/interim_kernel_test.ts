/**
 * Interim records against the real kernel: Agent.snapshot() on loopback connections held open
 * with known payloads. Each tracked socket end yields one interim record per pass with its
 * cumulative counters, the counters never go down, and the final record at close carries the
 * same cookie and the whole payload.
 */
import assert from "node:assert/strict";
import { Agent } from "../ffi/agent.ts";
import { decodeFlows, FLAG_INTERIM, RECORD_OFFSETS, RECORD_SIZE } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { kernelTest } from "./_agent.ts";
import { bpfMaxEntries } from "./_c_source.ts";
import { NamespaceHolder, testNamespace } from "./_netns.ts";
import {
  ConnectionHolder,
  HeldConnection,
  lowerBoundNs,
  uniqueLoopbackAddress,
  upperBoundNs,
} from "./_traffic.ts";

const BOOT_ID = new Uint8Array(16);
const DEADLINE_MS = 30_000;

/** A record and its raw flags (the decoder folds them into fields). */
interface Seen {
  flags: number;
  flow: FlowRecord;
}

function decodeWithFlags(bytes: Uint8Array, clockOffsetNs: bigint): Seen[] {
  const copy = bytes.slice();
  return decodeFlows(copy, clockOffsetNs, BOOT_ID).map((flow, i) => ({
    flags: copy[i * RECORD_SIZE + RECORD_OFFSETS.flags],
    flow,
  }));
}

function dotted(ip: Uint8Array): string {
  return ip.join(".");
}

/** What a record of one end must say, from that end's point of view. */
interface End {
  name: string;
  /** {@linkcode portsKey} of this end. */
  key: string;
  direction: "outbound" | "inbound";
  /** Payload this end sent that the peer read (so it is sent and, in time, acked). */
  sent: number;
  /** Payload this end read. */
  received: number;
  held: HeldConnection;
}

/** The client's end and the server's end of `held`, connection number `i`. */
function endsOf(held: HeldConnection, i: number): End[] {
  const end = (side: "client" | "server"): End => {
    const client = side === "client";
    const [local, remote] = client
      ? [held.clientPort, held.serverPort]
      : [held.serverPort, held.clientPort];
    return {
      name: `${side} of connection ${i}`,
      key: portsKey(local, remote),
      direction: client ? "outbound" : "inbound",
      // What one end sent is what the other read.
      get sent() {
        return client ? held.serverRead : held.clientRead;
      },
      get received() {
        return client ? held.clientRead : held.serverRead;
      },
      held,
    };
  };
  return [end("client"), end("server")];
}

/** One pass, with the wall-clock bounds around it. */
async function snapshot(
  agent: Agent,
  minAgeNs: bigint,
  clockOffsetNs: bigint,
  buffer = new Uint8Array(64 * RECORD_SIZE),
): Promise<{ records: Seen[]; count: number; beforeNs: bigint; afterNs: bigint }> {
  const records: Seen[] = [];
  const beforeNs = lowerBoundNs();
  const count = await agent.snapshot(minAgeNs, buffer, (bytes) => {
    assert.equal(bytes.length % RECORD_SIZE, 0, "whole records");
    records.push(...decodeWithFlags(bytes, clockOffsetNs));
  });
  const afterNs = upperBoundNs();
  assert.equal(count, records.length, "snapshot() counts the records it handed over");
  return { records, count, beforeNs, afterNs };
}

/** Names a socket end by its ports (the accepted sockets share the listener's local port). */
function portsKey(localPort: number, remotePort: number): string {
  return `${localPort}-${remotePort}`;
}

/**
 * The records of sockets from or to `host`, by {@linkcode portsKey}. A client connecting to
 * 127.a.b.c gets 127.0.0.1 as its own address, so its end is the one whose remote is `host`.
 */
function onHost(records: Seen[], host: string): Map<string, Seen[]> {
  const byPorts = new Map<string, Seen[]>();
  for (const r of records) {
    if (dotted(r.flow.localIp) !== host && dotted(r.flow.remoteIp) !== host) continue;
    const key = portsKey(r.flow.localPort, r.flow.remotePort);
    byPorts.set(key, [...byPorts.get(key) ?? [], r]);
  }
  return byPorts;
}

/**
 * A pass in which every end's sent payload is acknowledged: the peer's ACK may still be on its
 * way when the peer has read the bytes, so passes repeat until it arrived.
 */
async function settledSnapshot(
  agent: Agent,
  clockOffsetNs: bigint,
  host: string,
  ends: End[],
): Promise<{ byPort: Map<string, Seen[]>; beforeNs: bigint; afterNs: bigint }> {
  const deadline = performance.now() + DEADLINE_MS;
  for (;;) {
    const pass = await snapshot(agent, 0n, clockOffsetNs);
    const byPort = onHost(pass.records, host);
    const acked = ends.every((e) => byPort.get(e.key)?.[0]?.flow.bytesAcked === e.sent);
    if (acked) return { byPort, beforeNs: pass.beforeNs, afterNs: pass.afterNs };
    if (performance.now() > deadline) {
      assert.fail(`Timed out waiting for every interim record to show its payload acked`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function assertInterim(
  seen: Seen[] | undefined,
  end: End,
  pass: { beforeNs: bigint; afterNs: bigint },
): Seen {
  assert.equal(seen?.length, 1, `one interim record of the ${end.name}`);
  const { flags, flow } = seen![0];
  assert.ok((flags & FLAG_INTERIM) !== 0, `the ${end.name}'s record is interim`);
  assert.equal(flow.direction, end.direction, end.name);
  assert.equal(flow.closeState, "ESTABLISHED", end.name);
  assert.equal(flow.error, 0, end.name);
  assert.ok(flow.cookie > 0n, end.name);
  assert.ok(
    flow.tStartNs >= end.held.beforeNs && flow.tStartNs <= end.held.establishedNs,
    `the ${end.name} started when it connected`,
  );
  assert.ok(
    flow.tEndNs >= flow.tStartNs && flow.tEndNs >= pass.beforeNs && flow.tEndNs <= pass.afterNs,
    `the ${end.name}'s snapshot time is the pass's`,
  );
  assert.equal(flow.bytesReceived, end.received, `${end.name}: bytes received`);
  assert.equal(flow.bytesAcked, end.sent, `${end.name}: bytes acked`);
  assert.equal(flow.bytesSent - flow.bytesRetrans, end.sent, `${end.name}: bytes sent`);
  return seen![0];
}

const COUNTERS = ["bytesSent", "bytesAcked", "bytesReceived", "segsOut", "segsIn"] as const;

function assertNotBelow(later: FlowRecord, earlier: FlowRecord, what: string): void {
  for (const field of COUNTERS) {
    assert.ok(later[field] >= earlier[field], `${what}: ${field} went down`);
  }
}

/** Polls the agent's buffer until every end's final record arrived. */
async function finalRecords(
  agent: Agent,
  clockOffsetNs: bigint,
  host: string,
  ends: End[],
): Promise<Map<string, Seen[]>> {
  const buffer = new Uint8Array(1024 * RECORD_SIZE);
  const byPort = new Map<string, Seen[]>();
  const deadline = performance.now() + DEADLINE_MS;
  while (!ends.every((e) => byPort.has(e.key))) {
    if (performance.now() > deadline) assert.fail("Timed out waiting for the final records");
    const { bytes, position } = await agent.poll(buffer, 50);
    const mine = onHost(decodeWithFlags(buffer.subarray(0, bytes), clockOffsetNs), host);
    agent.commit(position);
    for (const [key, seen] of mine) byPort.set(key, [...byPort.get(key) ?? [], ...seen]);
  }
  return byPort;
}

/**
 * The scenario, with sock_ops following the sockets ("auto": the cgroup v2 root) or with the
 * tracepoints alone (""): each path starts the sockets' states the pass reads.
 */
async function interimScenario(t: Deno.TestContext, cgroupPath: string): Promise<void> {
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  const host = uniqueLoopbackAddress();
  using listener = Deno.listen({ hostname: host, port: 0 });
  // Open before the agent, which does not seed it: a socket the agent does not track.
  const untracked = await HeldConnection.open(listener, host);
  const held: HeldConnection[] = [];
  try {
    using agent = Agent.open({ pinDir, cgroupPath, noPin: true, noSeed: true });
    const clockOffsetNs = agent.clockReading().offsetNs;
    await untracked.talk(10, 10);
    for (let i = 0; i < 3; i++) held.push(await HeldConnection.open(listener, host));
    const ends = held.flatMap(endsOf);
    const listenerPort = (listener.addr as Deno.NetAddr).port;
    const notTracked = (byPorts: Map<string, Seen[]>) => {
      for (const key of endsOf(untracked, -1).map((e) => e.key)) {
        assert.ok(!byPorts.has(key), `no record of a socket opened before the agent (${key})`);
      }
      assert.ok(!byPorts.has(portsKey(listenerPort, 0)), "no record of the listening socket");
    };
    let first: Map<string, Seen[]>;

    await t.step(
      "the first pass has one record per socket end with the payload so far",
      async () => {
        await Promise.all(held.map((h, i) => h.talk(1000 * (i + 1) + 7, 500 * (i + 1) + 3)));
        const pass = await settledSnapshot(agent, clockOffsetNs, host, ends);
        for (const end of ends) assertInterim(pass.byPort.get(end.key), end, pass);
        assert.equal(
          [...pass.byPort.values()].flat().length,
          ends.length,
          "no other socket on the test's address",
        );
        notTracked(pass.byPort);
        // The two ends of a connection are two sockets.
        const cookies = new Set(ends.map((e) => pass.byPort.get(e.key)![0].flow.cookie));
        assert.equal(cookies.size, ends.length, "a cookie of its own for each socket end");
        first = pass.byPort;
      },
    );

    await t.step("a later pass after more traffic: counters grow and match exactly", async () => {
      await Promise.all(held.map((h, i) => h.talk(70_000 + i, 3_000 * (i + 1))));
      const pass = await settledSnapshot(agent, clockOffsetNs, host, ends);
      for (const end of ends) {
        const now = assertInterim(pass.byPort.get(end.key), end, pass);
        const before = first.get(end.key)![0];
        assert.equal(now.flow.cookie, before.flow.cookie, `${end.name}: the same socket`);
        assert.equal(now.flow.tStartNs, before.flow.tStartNs, `${end.name}: the same start`);
        assert.ok(now.flow.tEndNs >= before.flow.tEndNs, `${end.name}: a later snapshot`);
        assertNotBelow(now.flow, before.flow, end.name);
      }
      notTracked(pass.byPort);
      first = pass.byPort;
    });

    await t.step("a minimum age leaves out the connections younger than it", async () => {
      const older = await snapshot(agent, 3_600_000_000_000n, clockOffsetNs);
      assert.equal(onHost(older.records, host).size, 0, "none is an hour old");
      // An age every connection has reached by now (the clock bound is below the true time).
      const youngest = ends.reduce((t, e) => {
        const start = first.get(e.key)![0].flow.tStartNs;
        return start > t ? start : t;
      }, 0n);
      const reached = await snapshot(agent, lowerBoundNs() - youngest, clockOffsetNs);
      assert.equal(onHost(reached.records, host).size, ends.length, "all have reached their age");
    });

    await t.step(
      "a pass while one runs is refused; a throwing callback ends its pass",
      async () => {
        // One record per chunk: the first pass is still running when the second starts.
        const running = snapshot(agent, 0n, clockOffsetNs, new Uint8Array(RECORD_SIZE));
        await assert.rejects(
          snapshot(agent, 0n, clockOffsetNs),
          /^AgentLoadError: Cannot start a snapshot pass: one is running/,
        );
        assert.ok((await running).count >= ends.length);
        await assert.rejects(
          agent.snapshot(0n, new Uint8Array(RECORD_SIZE), () => {
            throw new Error("stop here");
          }),
          /stop here/,
        );
        const after = await snapshot(agent, 0n, clockOffsetNs);
        assert.equal(onHost(after.records, host).size, ends.length, "the next pass runs whole");
      },
    );

    await t.step("closing the agent from the callback ends the pass", async () => {
      // A second agent, so that the rest of the scenario keeps its own.
      const otherPinDir = `${pinDir}-other`;
      using other = Agent.open({ pinDir: otherPinDir, cgroupPath, noPin: true, noSeed: true });
      const extra = await HeldConnection.open(listener, host);
      try {
        await assert.rejects(
          other.snapshot(0n, new Uint8Array(RECORD_SIZE), () => other.close()),
          /^AgentLoadError: The BPF agent was closed during a snapshot pass$/,
        );
      } finally {
        extra.client.close();
        extra.server.close();
        await Deno.remove(otherPinDir, { recursive: true }).catch(() => {});
      }
    });

    await t.step(
      "the final record at close: same cookie, not interim, the whole payload",
      async () => {
        await Promise.all(held.map((h) => h.close()));
        const finals = await finalRecords(agent, clockOffsetNs, host, ends);
        for (const end of ends) {
          const seen = finals.get(end.key)!;
          assert.equal(seen.length, 1, `one final record of the ${end.name}`);
          const { flags, flow } = seen[0];
          const last = first.get(end.key)![0].flow;
          assert.equal(flags & FLAG_INTERIM, 0, `the ${end.name}'s final record is not interim`);
          assert.equal(flow.cookie, last.cookie, `${end.name}: the same socket`);
          assert.equal(flow.tStartNs, last.tStartNs, `${end.name}: the same start`);
          assert.equal(flow.bytesReceived, end.received, `${end.name}: bytes received`);
          assert.equal(flow.bytesAcked, end.sent, `${end.name}: bytes acked`);
          assert.equal(flow.bytesSent - flow.bytesRetrans, end.sent, `${end.name}: bytes sent`);
          assertNotBelow(flow, last, end.name);
        }
        const pass = await snapshot(agent, 0n, clockOffsetNs);
        const open = onHost(pass.records, host);
        for (const end of ends) assert.ok(!open.has(end.key), `no interim record after close`);
      },
    );
  } finally {
    for (const h of held) {
      for (const conn of [h.client, h.server]) {
        try {
          conn.close();
        } catch {
          // closed by the test
        }
      }
    }
    untracked.client.close();
    untracked.server.close();
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
  }
}

kernelTest(
  "snapshot() yields interim records of open sockets, then the final record at close",
  (t) => interimScenario(t, "auto"),
);

kernelTest(
  "with the tracepoints alone (no sock_ops) snapshot() yields the same interim records",
  (t) => interimScenario(t, ""),
);

/** Records one run of the pass's walk holds. */
const RUN_RECORDS = bpfMaxEntries("snapshot_out");
/** More connections than that: each is two tracked sockets. */
const MANY_CONNECTIONS = Math.ceil(RUN_RECORDS / 2) + 100;

kernelTest(
  "a pass over more sockets than one run of the walk holds yields each socket once, beside churn",
  async () => {
    const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
    const host = uniqueLoopbackAddress();
    const churnHost = uniqueLoopbackAddress();
    using churnListener = Deno.listen({ hostname: churnHost, port: 0 });
    try {
      using agent = Agent.open({ pinDir, cgroupPath: "auto", noPin: true, noSeed: true });
      const clockOffsetNs = agent.clockReading().offsetNs;
      // Another process holds them: their descriptors would crowd the test runner's.
      await using _held = await ConnectionHolder.start(host, 4, MANY_CONNECTIONS);
      // A pass given up after its first piece leaves its marks behind, as an agent stopped
      // halfway would: the next pass must not take them for its own.
      await assert.rejects(
        agent.snapshot(0n, new Uint8Array(1000 * RECORD_SIZE), () => {
          throw new Error("given up");
        }),
        /given up/,
      );
      // Sockets come and go while the pass walks: states are added and deleted between its runs.
      let churning = true;
      const churn = (async () => {
        const churnPort = (churnListener.addr as Deno.NetAddr).port;
        while (churning) {
          const [client, server] = await Promise.all([
            Deno.connect({ hostname: churnHost, port: churnPort }),
            churnListener.accept(),
          ]);
          client.close();
          server.close();
        }
      })();
      // 1000 records a read: the pass is read in many pieces while the churn goes on.
      const pass = await snapshot(agent, 0n, clockOffsetNs, new Uint8Array(1000 * RECORD_SIZE));
      churning = false;
      await churn;

      const ends = [...onHost(pass.records, host).values()];
      assert.equal(ends.length, 2 * MANY_CONNECTIONS, "a record of every socket end");
      assert.ok(ends.every((seen) => seen.length === 1), "one record of each socket end");
      assert.ok(pass.count > RUN_RECORDS, `more records (${pass.count}) than one run holds`);
      const cookies = new Set(pass.records.map((r) => r.flow.cookie));
      assert.equal(cookies.size, pass.records.length, "no socket twice in the pass");
    } finally {
      await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    }
  },
);

kernelTest(
  "a connection of another network namespace gets its interim records too",
  async () => {
    const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
    try {
      using agent = Agent.open({ pinDir, cgroupPath: "auto", noPin: true, noSeed: true });
      const clockOffsetNs = agent.clockReading().offsetNs;
      await using ns = await testNamespace();
      await using holder = new NamespaceHolder(ns.name);
      // Connected after the agent started: sock_ops follows both ends from their handshake.
      const [client, server] = await holder.connect();
      const pass = await snapshot(agent, 0n, clockOffsetNs);
      for (
        const [local, remote, direction] of [[client, server, "outbound"], [
          server,
          client,
          "inbound",
        ]] as const
      ) {
        const mine = pass.records.filter((r) =>
          r.flow.localPort === local && r.flow.remotePort === remote &&
          dotted(r.flow.localIp) === "127.0.0.1"
        );
        assert.equal(mine.length, 1, `one interim record of ${local} -> ${remote} in ${ns.name}`);
        assert.ok((mine[0].flags & FLAG_INTERIM) !== 0);
        assert.equal(mine[0].flow.direction, direction);
        assert.equal(mine[0].flow.closeState, "ESTABLISHED");
      }
      await holder.close();
    } finally {
      await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    }
  },
);
