/**
 * Sockets open since before the capture, in network namespaces the seeding cannot reach: the
 * state tracepoint records their closes while any of them has a file, and once none has, the
 * agent detaches it and the destroy program records what is left (orphans). Which program a
 * record names depends on whether a sock_ops program (another agent's, on this host) followed
 * the socket from its connect; each test observes that rather than assumes it.
 */
import assert from "node:assert/strict";
import { Agent, ownCapture } from "../ffi/agent.ts";
import type { FlowJson } from "../lib/json_lines.ts";
import { AgentProcess, canFollowSeeded, kernelTest, socketRecord, stopLine } from "./_agent.ts";
import { NamespaceHolder, testNamespace } from "./_netns.ts";
import { run } from "./_run.ts";

/** IDs of the sock_ops programs attached anywhere in the cgroup v2 tree (other agents'). */
async function sockOpsPrograms(): Promise<number[]> {
  const tree = JSON.parse(await run("bpftool", "-j", "cgroup", "tree")) as {
    programs: { id: number; attach_type: string }[];
  }[];
  // Older bpftool names the attach type "sock_ops"; newer ones (Debian's v7.1) take libbpf's name.
  const sockOps = new Set(["sock_ops", "cgroup_sock_ops"]);
  return tree.flatMap((c) => c.programs).filter((p) => sockOps.has(p.attach_type)).map((p) => p.id);
}

/**
 * Whether a sock_ops program followed the holder's sockets from their connect: "yes" when one
 * was attached before the connect and still is after it, "no" when none was at either moment,
 * "unsure" when an agent came or went in between.
 */
type Followed = "yes" | "no" | "unsure";

async function connectObserved(
  holder: NamespaceHolder,
): Promise<{ ports: [number, number]; followed: Followed }> {
  const linksBefore = await newestLink();
  const before = await sockOpsPrograms();
  const ports = await holder.connect();
  const after = await sockOpsPrograms();
  // An agent of another test may attach and detach between the two looks (one opened for a
  // moment): its link is newer than any before them.
  const attachedBetween = await newestLink() !== linksBefore;
  const followed = before.some((id) => after.includes(id))
    ? "yes"
    : before.length === 0 && after.length === 0 && !attachedBetween
    ? "no"
    : "unsure";
  return { ports, followed };
}

/** The highest BPF link ID in use (the kernel numbers links upwards), or 0 without links. */
async function newestLink(): Promise<number> {
  const links = JSON.parse(await run("bpftool", "-j", "link", "show")) as { id: number }[];
  return Math.max(0, ...links.map((l) => l.id));
}

/**
 * The ID of the BPF program `name` of the agent this process opened (Agent.open), found among
 * this process's descriptors.
 */
async function ownProgramId(name: string): Promise<number> {
  for (const { name: fd } of Deno.readDirSync("/proc/self/fd")) {
    const target = await Deno.readLink(`/proc/self/fd/${fd}`).catch(() => "");
    if (target !== "anon_inode:bpf-prog") continue;
    const info = await Deno.readTextFile(`/proc/self/fdinfo/${fd}`).catch(() => "");
    const id = /^prog_id:\s*(\d+)/m.exec(info)?.[1];
    if (!id) continue;
    const prog = JSON.parse(await run("bpftool", "-j", "prog", "show", "id", id)) as {
      name: string;
    };
    if (prog.name === name) return Number(id);
  }
  throw new Error(`No BPF program ${name} among this process's descriptors`);
}

/** How many BPF links run the program `id`: 0 once it is detached. */
async function linksOf(id: number): Promise<number> {
  const links = JSON.parse(await run("bpftool", "-j", "link", "show")) as { prog_id: number }[];
  return links.filter((l) => l.prog_id === id).length;
}

/** The programs that may report the close: sock_ops if it followed, else `unfollowedPath`. */
function closePaths(followed: Followed, unfollowedPath: string): string[] {
  return {
    yes: ["sock_ops"],
    no: [unfollowedPath],
    unsure: ["sock_ops", unfollowedPath],
  }[followed];
}

/** The one record of each of the holder's two sockets (client, then server); seeded both. */
async function holderRecords(
  agent: AgentProcess,
  [client, server]: [number, number],
  timeoutMs: number,
): Promise<FlowJson[]> {
  const found: FlowJson[] = [];
  for (const [local, remote] of [[client, server], [server, client]]) {
    const recs = await agent.waitForRecords(socketRecord(local, remote), 1, timeoutMs);
    assert.equal(recs.length, 1, `one record of ${local} -> ${remote}`);
    assert.equal(recs[0].seeded, true, "its start is unknown");
    found.push(recs[0]);
  }
  return found;
}

function assertSeenBy(rec: FlowJson, expected: string[]): void {
  assert.ok(expected.includes(rec.close_seen_by as string), `${rec.close_seen_by} in ${expected}`);
}

kernelTest(
  "a connection of another network namespace, open before the agent starts, is recorded at its close",
  async () => {
    // The seeding iterator sees only the agent's namespace. Unfollowed sockets with a file keep
    // the state tracepoint attached, and it records their closes.
    await using ns = await testNamespace();
    await using holder = new NamespaceHolder(ns.name);
    const { ports: [clientPort, serverPort], followed } = await connectObserved(holder);
    await using agent = await AgentProcess.start();
    const started = agent.stderrLines.join("\n");
    if (followed === "no") {
      assert.doesNotMatch(started, /all followed by sock_ops/, "the tracepoint stays for them");
      if (canFollowSeeded()) assert.match(started, /\d+ open sockets of other network namespaces/);
    }
    await holder.close();
    for (const rec of await holderRecords(agent, [clientPort, serverPort], 10_000)) {
      assertSeenBy(rec, closePaths(followed, "tracepoint"));
      assert.notEqual(rec.close_state, "UNKNOWN");
    }
  },
);

kernelTest(
  "an orphan of another network namespace, open before the agent starts, is recorded at its destroy",
  async () => {
    // An orphan (its owner closed it; its FIN is not acknowledged yet) has no file, so the
    // count that lets the agent detach the state tracepoint cannot see it. With the tracepoint
    // detached, the destroy program records it.
    await using ns = await testNamespace();
    // Up to 100 retransmissions, at most a second apart: the orphans outlive the agent's start
    // with loopback down, and close within a second of it coming up.
    const sysctls = ["net.ipv4.tcp_orphan_retries=100"];
    if (await Deno.stat("/proc/sys/net/ipv4/tcp_rto_max_ms").catch(() => undefined)) {
      sysctls.push("net.ipv4.tcp_rto_max_ms=1000");
    }
    await run("ip", "netns", "exec", ns.name, "sysctl", "-q", "-w", ...sysctls);
    await using holder = new NamespaceHolder(ns.name);
    const { ports: [clientPort, serverPort], followed } = await connectObserved(holder);
    await run("ip", "-n", ns.name, "link", "set", "lo", "down");
    await holder.close();
    const orphans = await run("ip", "netns", "exec", ns.name, "ss", "-Htn", "state", "fin-wait-1");
    assert.equal(orphans.trim().split("\n").length, 2, `both sockets are orphans: ${orphans}`);

    await using agent = await AgentProcess.start();
    const detached = /all followed by sock_ops/.test(agent.stderrLines.join("\n"));
    await run("ip", "-n", ns.name, "link", "set", "lo", "up");
    const recs = await holderRecords(agent, [clientPort, serverPort], 30_000);
    for (const rec of recs) {
      assertSeenBy(rec, closePaths(followed, detached ? "destroy" : "tracepoint"));
      // Its destroy comes when its close does, but which state it closed from is not known there.
      if (rec.close_seen_by === "destroy") assert.equal(rec.close_state, "UNKNOWN");
    }
    assert.equal(await agent.stop(), 0);
    const atDestroy = recs.filter((r) => r.close_seen_by === "destroy").length;
    assert.ok(stopLine(agent).unfollowed >= atDestroy, "the stop line counts them");
  },
);

kernelTest(
  "the state tracepoint is detached once no socket of another namespace is left unfollowed",
  async () => {
    await using ns = await testNamespace();
    await using holder = new NamespaceHolder(ns.name);
    const { followed } = await connectObserved(holder);
    const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
    try {
      using agent = Agent.open({ pinDir });
      const first = agent.stats();
      if (!canFollowSeeded()) {
        assert.equal(first.stateTracepoint, true, "older kernels keep the tracepoint");
        assert.equal(await agent.followCheck(), -1);
        return;
      }
      if (followed === "no") {
        // Nobody followed the holder's two sockets: they keep the tracepoint.
        assert.equal(first.stateTracepoint, true);
        assert.ok(first.unfollowed >= 2, `the holder's sockets counted: ${first.unfollowed}`);
        await holder.close();
        // Other namespaces of this host may still hold sockets of their own; the holder's are gone.
        const left = await agent.followCheck();
        assert.ok(left === 0 || left <= first.unfollowed - 2, `${left} of ${first.unfollowed}`);
        assert.equal(agent.stats().stateTracepoint, left !== 0);
      } else {
        await holder.close();
      }
      if (!agent.stats().stateTracepoint) {
        assert.equal(await agent.followCheck(), 0, "once detached, it stays so");
        const capture = ownCapture(pinDir);
        for (const name of ["link_state", "link_destroy_tp"]) {
          const link = await Deno.stat(`${capture}/${name}`).catch(() => undefined);
          assert.equal(link, undefined, `${name}: the classic destroy goes with the tracepoint`);
        }
        for (const name of ["on_state_btf", "on_destroy_tp"]) {
          assert.equal(await linksOf(await ownProgramId(name)), 0, `${name} no longer runs`);
        }
      } else {
        const link = await Deno.stat(`${ownCapture(pinDir)}/link_destroy_tp`);
        assert.ok(link.isFile, "the classic destroy stays while the tracepoint does");
        assert.equal(await linksOf(await ownProgramId("on_destroy_tp")), 1, "and runs");
      }
    } finally {
      await Deno.remove(pinDir, { recursive: true }).catch(() => {});
    }
  },
);
