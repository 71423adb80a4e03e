/**
 * A capture that outlives the agent process: a restart (SIGTERM, then a new start) or a crash
 * (SIGKILL) during connection churn loses no record and, after SIGTERM, duplicates none; so does
 * an upgrade to an agent of another capture state version, which retires the old capture; a
 * connection open across a restart keeps its start and identity; `detach` ends it all.
 */
import assert from "node:assert/strict";
import { decodeSpooledBatch, isSpooledBatch, spooledSockets } from "./_spool_files.ts";
import { ownCapture } from "../ffi/agent.ts";
import { AgentProcess, canFollowSeeded, kernelTest, socketRecord } from "./_agent.ts";
import { type ChurnResult, gridSocket, type GridTally, runChurn, tally } from "./_traffic.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** The shim of another capture state version (capture-v0), built by `make test`. */
const OTHER_STATE_LIB = new URL("../build/other-state/libflowexporter.so", import.meta.url)
  .pathname;

/** Waits until `count()` reaches `want`, or fails after `timeoutMs` with `what`. */
async function waitFor(count: () => number, want: number, what: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (count() < want) {
    if (Date.now() > deadline) throw new Error(`${what}: ${count()} of ${want}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function assertComplete(sockets: GridTally, result: ChurnResult): void {
  assert.equal(sockets.server, result.accepted, "one record per accepted socket");
  assert.equal(
    sockets.client,
    result.sockets_closed - result.accepted,
    "one record per client socket",
  );
}

kernelTest("a restart during churn loses no record and duplicates none", async () => {
  const grid = { firstAddr: "127.79.0.1", addrs: 4, portBase: 22000, ports: 2 };
  const first = await AgentProcess.start();
  let second: AgentProcess | undefined;
  try {
    const running = runChurn(grid, { seconds: 3, rate: 2000 });
    const mine = (a: AgentProcess) => a.records.filter((r) => gridSocket(grid, r));
    // Restart while the churn runs: once the first agent has seen some of it.
    await waitFor(() => mine(first).length, 500, "records before the restart");
    assert.equal(await first.stop({ keep: true }), 0);
    second = await first.restart();
    const resumed = second.stderrLines.join("\n");
    assert.match(resumed, /resumed the pinned capture/);
    // Its programs followed every socket since the first agent seeded: no second walk.
    assert.match(resumed, /not seeded again/);
    // The count of sockets sock_ops does not follow still decides on the state tracepoint.
    if (canFollowSeeded()) {
      assert.match(resumed, /all followed by sock_ops|not followed by sock_ops yet/);
    }
    const result = await running;
    assert.ok(result.connections > 2000, `${result.connections} connections`);
    await waitFor(
      () => mine(first).length + mine(second!).length,
      result.sockets_closed,
      "records of the churn's sockets",
    );
    const sockets = [...mine(first), ...mine(second)].map((r) => gridSocket(grid, r)!);
    const counts = tally(sockets);
    assertComplete(counts, result);
    assert.equal(counts.duplicates, 0, "no socket recorded twice across the restart");
    assert.ok(mine(second).length > 0, "the second agent recorded part of the churn");
    assert.equal(await second.stop({ keep: true }), 0);
    assert.match(second.stderrLines.join("\n"), /kernel drops 0,/);
  } finally {
    await first.stop();
    await second?.stop();
  }
});

kernelTest(
  "an upgrade across capture state versions retires the old capture, losing and doubling no record",
  async () => {
    assert.ok(
      Deno.statSync(OTHER_STATE_LIB).isFile,
      `${OTHER_STATE_LIB} (make build/other-state/libflowexporter.so)`,
    );
    const grid = { firstAddr: "127.79.6.1", addrs: 4, portBase: 22500, ports: 2 };
    const first = await AgentProcess.start([], { FLOWEXPORTER_LIB: OTHER_STATE_LIB });
    let second: AgentProcess | undefined;
    // Another tool holding an old program (pinned) must not hold the retirement up: once its
    // links are gone, the program no longer runs.
    const held = `/sys/fs/bpf/flowexporter-test-held-${crypto.randomUUID().slice(0, 8)}`;
    try {
      const old = `${first.pinDir}/capture-v0`;
      const oldPrograms: number[] = [];
      for (const name of await pinnedLinks(first, old)) {
        const link = await bpftool("link", "show", "pinned", `${old}/${name}`);
        assert.ok(link, `the old agent pinned ${name} in ${old}`);
        oldPrograms.push(link.prog_id as number);
      }
      assert.ok(await bpftool("prog", "pin", "id", `${oldPrograms[0]}`, held) !== undefined);
      const running = runChurn(grid, { seconds: 3, rate: 2000 });
      const mine = (a: AgentProcess) => a.records.filter((r) => gridSocket(grid, r));
      await waitFor(() => mine(first).length, 500, "records before the upgrade");
      assert.equal(await first.stop({ keep: true }), 0);
      // Closed while no agent runs: only the old capture's ring has them.
      await new Promise((r) => setTimeout(r, 300));
      second = await first.restart();
      const retired = /retired the capture of another agent version in (\S+): (\d+) flows/.exec(
        await second.waitForLog(/retired the capture/),
      )!;
      assert.equal(retired[1], old);
      assert.ok(Number(retired[2]) > 0, "the old ring held the flows closed during the restart");
      assert.doesNotMatch(
        second.stderrLines.join("\n"),
        /resumed the pinned capture/,
        "a new capture, not the old one",
      );
      assert.deepEqual(
        [...Deno.readDirSync(first.pinDir)].filter((e) => e.name.startsWith("capture-"))
          .map((e) => e.name),
        [ownCapture(first.pinDir).split("/").at(-1)],
        "the old capture is unpinned",
      );
      // The kernel frees a released link's program once nothing holds it: shortly after.
      Deno.removeSync(held);
      const deadline = Date.now() + 5_000;
      for (const id of oldPrograms) {
        while (await bpftool("prog", "show", "id", `${id}`)) {
          assert.ok(Date.now() < deadline, `program ${id} is gone within 5 s`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      const result = await running;
      await waitFor(
        () => mine(first).length + mine(second!).length,
        result.sockets_closed,
        "records of the churn's sockets",
      );
      const counts = tally([...mine(first), ...mine(second)].map((r) => gridSocket(grid, r)!));
      assertComplete(counts, result);
      assert.equal(counts.duplicates, 0, "no socket recorded twice across the upgrade");
      assert.equal(await second.stop({ keep: true }), 0);
      assert.match(second.stderrLines.join("\n"), /kernel drops 0,/);
    } finally {
      await Deno.remove(held).catch(() => {});
      await first.stop();
      await second?.stop();
    }
  },
);

kernelTest("a connection open across a restart keeps its start and its workload", async () => {
  const first = await AgentProcess.start();
  let second: AgentProcess | undefined;
  try {
    const identity = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", MAIN, "identity", ...args, "--pin-dir", first.pinDir],
        stdout: "null",
        stderr: "inherit",
      }).output();
    assert.ok((await identity("set-ip", "127.79.1.1", "db-before-restart")).success);
    using listener = Deno.listen({ hostname: "127.79.1.1", port: 0 });
    const serverPort = (listener.addr as Deno.NetAddr).port;
    const client = await Deno.connect({ hostname: "127.79.1.1", port: serverPort });
    const server = await listener.accept();
    const clientPort = (client.localAddr as Deno.NetAddr).port;
    await client.write(new Uint8Array(1000));
    await server.read(new Uint8Array(2000));
    assert.equal(await first.stop({ keep: true }), 0);
    const restartedAt = BigInt(Date.now()) * 1_000_000n;
    second = await first.restart();
    // A mapping that changes later does not re-attribute an open flow.
    assert.ok((await identity("delete-ip", "127.79.1.1")).success);
    client.close();
    await server.read(new Uint8Array(16));
    server.close();
    const [rec] = await second.waitForRecords(socketRecord(serverPort, clientPort), 1);
    assert.equal(rec.seeded, false, "not a seeded socket: its start is known");
    assert.ok((rec.t_start_ns as bigint) < restartedAt, "t_start is from before the restart");
    assert.equal(rec.direction, "inbound");
    assert.equal(rec.local_workload_id, "db-before-restart");
    assert.equal(rec.identity_source, "ip-map");
    assert.equal(rec.bytes_received, 1000);
  } finally {
    await first.stop();
    await second?.stop();
  }
});

kernelTest(
  "an agent killed with SIGKILL during churn loses no record at its next start",
  async () => {
    const grid = { firstAddr: "127.79.2.1", addrs: 4, portBase: 22100, ports: 2 };
    // Short windows: some reach the spool before the kill, the rest is in the journal.
    const flags = ["--batch-interval", "1s", "--output", "json"];
    const first = await AgentProcess.start(flags);
    let second: AgentProcess | undefined;
    try {
      const running = runChurn(grid, { seconds: 3, rate: 2000 });
      await waitFor(
        () => first.records.filter((r) => gridSocket(grid, r)).length,
        1000,
        "records before the kill",
      );
      await first.stop({ keep: true, signal: "SIGKILL" });
      second = await first.restart(flags);
      const result = await running;
      // Every socket reaches the spool once the second agent has stopped (SIGTERM spools all).
      await waitFor(
        () => second!.records.filter((r) => gridSocket(grid, r)).length,
        1,
        "records after the kill",
      );
      assert.equal(await second.stop({ keep: true }), 0);
      const counts = tally(await spooledSockets(grid, `${first.workDir}/spool`));
      assertComplete(counts, result);
    } finally {
      await first.stop();
      await second?.stop();
    }
  },
);

/** `bpftool -j` output, or undefined when bpftool says the object does not exist. */
async function bpftool(...args: string[]): Promise<Record<string, unknown> | undefined> {
  const out = await new Deno.Command("bpftool", { args: ["-j", ...args], stderr: "null" })
    .output();
  return out.success ? JSON.parse(new TextDecoder().decode(out.stdout)) : undefined;
}

/**
 * The links an agent's capture in `dir` pins. The state tracepoint's and the classic destroy
 * program's go together once sock_ops follows every open socket: they must be gone when the agent
 * said so at its start.
 */
async function pinnedLinks(agent: AgentProcess, dir: string): Promise<string[]> {
  const followed = agent.stderrLines.some((l) => l.includes("all followed by sock_ops"));
  const state = await bpftool("link", "show", "pinned", `${dir}/link_state`);
  const destroyTp = await bpftool("link", "show", "pinned", `${dir}/link_destroy_tp`);
  if (followed) assert.equal(state, undefined, "the state tracepoint is detached");
  assert.equal(destroyTp === undefined, state === undefined, "the classic destroy goes with it");
  const tracepoints = state ? ["link_state", "link_destroy_tp"] : [];
  return ["link_sockops", "link_destroy_btf", ...tracepoints];
}

kernelTest("detach leaves no pinned object and no attached program", async (t) => {
  // Versioned, as the default pin directory is (…/flowexporter/v1): detach takes its folder too.
  const pinRoot = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  // The folder goes even when the agent fails to start (it may have made it by then).
  const agent = await AgentProcess.start(["--pin-dir", `${pinRoot}/v1`]).catch(async (error) => {
    await Deno.remove(pinRoot, { recursive: true }).catch(() => {});
    throw error;
  });
  try {
    const lock = `${agent.workDir}/lock`;
    const cli = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", MAIN, ...args, "--pin-dir", agent.pinDir, "--lock-file", lock],
        env: { FLOWEXPORTER_CONFIG: "" }, // no configuration file of the host's
        stdout: "piped",
        stderr: "piped",
      }).output();
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    const capture = ownCapture(agent.pinDir);

    await t.step("detach refuses while the agent runs", async () => {
      const out = await cli("detach");
      assert.equal(out.code, 1);
      assert.match(text(out.stderr), /Cannot detach while an agent runs/);
    });

    const links: { id: number; prog: number }[] = [];
    for (const name of await pinnedLinks(agent, capture)) {
      const link = await bpftool("link", "show", "pinned", `${capture}/${name}`);
      assert.ok(link, `link ${name} is pinned`);
      links.push({ id: link.id as number, prog: link.prog_id as number });
    }
    const maps: number[] = [];
    for (const name of ["flows", "events", "drops", "host_workload"]) {
      const map = await bpftool("map", "show", "pinned", `${capture}/${name}`);
      assert.ok(map, `map ${name} is pinned`);
      maps.push(map.id as number);
    }
    assert.equal(await agent.stop({ keep: true }), 0);

    await t.step("doctor reports the programs a stopped agent left attached", async () => {
      // The agent's own spool: doctor probes it by writing, and the default one is a real agent's.
      const out = await cli("doctor", "--spool-dir", `${agent.workDir}/spool`);
      assert.match(text(out.stdout), /warn\s+instance\s+no agent running, but BPF programs/);
    });

    await t.step("detach unpins everything, and the kernel frees it", async () => {
      const out = await cli("detach");
      assert.equal(out.code, 0, text(out.stderr));
      assert.throws(() => Deno.statSync(agent.pinDir), Deno.errors.NotFound);
      assert.throws(() => Deno.statSync(pinRoot), Deno.errors.NotFound, "its folder goes too");
      assert.match(text(out.stderr), new RegExp(`removed .*${pinRoot}/v1, ${pinRoot}\\)`));
      // The kernel frees programs and maps after an RCU grace period: wait for it.
      const gone = async () => {
        for (const l of links) {
          if (await bpftool("link", "show", "id", `${l.id}`)) return false;
          if (await bpftool("prog", "show", "id", `${l.prog}`)) return false;
        }
        for (const id of maps) if (await bpftool("map", "show", "id", `${id}`)) return false;
        return true;
      };
      const deadline = Date.now() + 10_000;
      while (!(await gone())) {
        assert.ok(Date.now() < deadline, "links, programs and maps are gone within 10 s");
        await new Promise((r) => setTimeout(r, 100));
      }
    });
  } finally {
    await agent.stop();
    await Deno.remove(pinRoot, { recursive: true }).catch(() => {});
  }
});

kernelTest(
  "records that overflow the buffer while no agent runs are counted once, by the next agent",
  async () => {
    const grid = { firstAddr: "127.79.3.1", addrs: 2, portBase: 22200, ports: 1 };
    // A ring of 64 KiB holds about 240 records: the churn overflows it while no agent reads.
    const flags = ["--ring-bytes", "64KiB", "--batch-interval", "1s"];
    const first = await AgentProcess.start(flags);
    let second: AgentProcess | undefined;
    try {
      assert.equal(await first.stop({ keep: true }), 0);
      const result = await runChurn(grid, { seconds: 1, rate: 2000 });
      second = await first.restart(flags);
      assert.equal(await second.stop({ keep: true }), 0);
      const drops = Number(/kernel drops (\d+)/.exec(second.stderrLines.join("\n"))?.[1]);
      assert.ok(drops > 0, `the ring overflowed (${drops} drops)`);
      let reported = 0n;
      const spoolDir = `${first.workDir}/spool`;
      for (const entry of Deno.readDirSync(spoolDir)) {
        if (!entry.isFile || !isSpooledBatch(entry.name)) continue;
        reported += (await decodeSpooledBatch(`${spoolDir}/${entry.name}`)).header.loss.kernelDrops;
      }
      assert.equal(reported, BigInt(drops), "the batches report every drop, once");
      const captured = tally(await spooledSockets(grid, spoolDir));
      assert.ok(
        captured.server + captured.client + drops >= result.sockets_closed,
        `${
          captured.server + captured.client
        } captured + ${drops} dropped of ${result.sockets_closed}`,
      );
    } finally {
      await first.stop();
      await second?.stop();
    }
  },
);

kernelTest("records across the end of a small ring arrive whole", async () => {
  // A 64 KiB ring holds 240 records of 272 bytes (header included), so one record in about
  // 240 is split by the ring's end: the reader copies it in two parts (the ring is mapped once).
  const grid = { firstAddr: "127.79.5.1", addrs: 2, portBase: 22400, ports: 1 };
  const agent = await AgentProcess.start(["--ring-bytes", "64KiB", "--poll-ms", "5"]);
  try {
    const startNs = BigInt(Date.now() - 1000) * 1_000_000n;
    const result = await runChurn(grid, { seconds: 2, rate: 1000 });
    const endNs = BigInt(Date.now() + 1000) * 1_000_000n;
    const mine = () => agent.records.filter((r) => gridSocket(grid, r));
    await waitFor(() => mine().length, result.sockets_closed, "the churn's records", 10_000)
      .catch(() => {}); // a busy host may overflow so small a ring: the drops are counted below
    assert.equal(await agent.stop({ keep: false }), 0);
    const drops = Number(/kernel drops (\d+)/.exec(agent.stderrLines.join("\n"))?.[1]);
    const records = mine();
    assert.ok(records.length > 1000, `${records.length} records: the ring wrapped many times`);
    assert.ok(records.length + drops >= result.sockets_closed, `${records.length} + ${drops}`);
    assert.equal(tally(records.map((r) => gridSocket(grid, r)!)).duplicates, 0);
    for (const r of records) {
      // Each part of a record is checked: a split copy gone wrong leaves bytes of other records.
      const where = JSON.stringify(r, (_, v) => typeof v === "bigint" ? `${v}` : v);
      const [start, end] = [r.t_start_ns as bigint, r.t_end_ns as bigint];
      assert.ok(start >= startNs && end <= endNs && start <= end, `times in the test: ${where}`);
      assert.equal(r.family, 4, where);
      assert.ok((r.bytes_sent as number) < 1_000 && (r.bytes_received as number) < 1_000, where);
      assert.equal(r.local_workload_id, "", `no workload on this host: ${where}`);
    }
    assert.ok(!agent.stderrLines.some((l) => l.includes("invalid flow")), "no invalid record");
  } finally {
    await agent.stop();
  }
});
