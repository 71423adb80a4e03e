/**
 * Agent.open() names the step that failed, with the kernel's reason, so that an operator reads
 * "Cannot attach sock_ops: …" rather than a bare errno. Each case gives one step a bad target.
 */
import assert from "node:assert/strict";
import { Agent, AgentLoadError } from "../ffi/agent.ts";
import { kernelTest } from "./_agent.ts";
import { churn, uniqueLoopbackAddress } from "./_traffic.ts";

/** A pin directory of this test's own; removed, with whatever the agent pinned, at the end. */
async function withPinDir(fn: (pinDir: string) => Promise<void> | void): Promise<void> {
  const pinDir = `/sys/fs/bpf/flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await fn(pinDir);
  } finally {
    await Deno.remove(pinDir, { recursive: true }).catch(() => {});
  }
}

function assertOpenFails(options: Parameters<typeof Agent.open>[0], message: RegExp): void {
  assert.throws(() => Agent.open(options), (error: unknown) => {
    assert.ok(error instanceof AgentLoadError, `an AgentLoadError, got ${error}`);
    assert.match(error.message, message);
    assert.ok(!error.message.includes("\n"), "one line");
    return true;
  });
}

kernelTest("a missing cgroup names the cgroup step", () =>
  withPinDir((pinDir) =>
    assertOpenFails(
      { pinDir, cgroupPath: "/sys/fs/cgroup/no-such-cgroup", noSeed: true },
      /^Cannot open cgroup \/sys\/fs\/cgroup\/no-such-cgroup for sock_ops: No such file or directory/,
    )
  ));

kernelTest(
  "a directory that is no cgroup names the sock_ops attach step",
  () =>
    withPinDir((pinDir) =>
      assertOpenFails(
        { pinDir, cgroupPath: "/tmp", noSeed: true },
        /^Cannot attach sock_ops to cgroup \/tmp: Bad file descriptor/,
      )
    ),
);

kernelTest(
  "a pinned capture of other sizes names the load step and says what to do",
  () =>
    withPinDir((pinDir) => {
      Agent.open({ pinDir, ringBytes: 1 << 20, noSeed: true }).close();
      assertOpenFails(
        { pinDir, ringBytes: 1 << 21, noSeed: true },
        /^Cannot load the BPF program \(reusing the pinned capture in .*capture-v\d+: run flowexporter detach if its sizes changed\)/,
      );
    }),
);

kernelTest(
  "the perf buffer next to a pinned ring buffer capture says to detach first",
  () =>
    withPinDir((pinDir) => {
      Agent.open({ pinDir, noSeed: true }).close();
      assertOpenFails(
        { pinDir, perfBuffer: true, noSeed: true },
        /^Cannot use the perf buffer: a pinned ring buffer capture runs at .*capture-v\d+ \(run flowexporter detach first\)/,
      );
    }),
);

kernelTest(
  "an agent opened again on its own pin directory resumes the capture",
  () =>
    withPinDir((pinDir) => {
      const first = Agent.open({ pinDir, noSeed: true });
      const ring = first.stats().ring.id;
      assert.equal(first.stats().resumed, false);
      first.close();
      using second = Agent.open({ pinDir, noSeed: true });
      assert.equal(second.stats().resumed, true);
      assert.equal(second.stats().ring.id, ring, "the same ring buffer");
    }),
);

kernelTest(
  "the records a reader has not consumed are counted as waiting in the ring",
  () =>
    withPinDir(async (pinDir) => {
      using agent = Agent.open({ pinDir, noSeed: true });
      const buffer = new Uint8Array(agent.recordSize * 4096);
      const drain = async () => {
        for (;;) {
          const { bytes, position } = await agent.poll(buffer, 0);
          if (bytes === 0) return;
          agent.commit(position);
        }
      };
      await drain();
      // 40 connections: 80 sockets close, each a record, and nothing reads them yet.
      await churn(uniqueLoopbackAddress(), 40);
      // Other sockets of the host may close meanwhile: at least these are waiting.
      const { waiting } = agent.stats().ring;
      assert.ok(waiting >= 80, `${waiting} records waiting`);
      await drain();
      assert.ok(agent.stats().ring.waiting < 80, "the drain consumed them");
    }),
);

kernelTest(
  "the kernel wakes a waiting reader at each step of uncommitted data, not only at the first",
  () =>
    withPinDir(async (pinDir) => {
      // A 4 MiB ring: the wakeup step is a quarter of it, 1 MiB (about 3 900 records).
      using agent = Agent.open({ pinDir, ringBytes: 4 << 20, noSeed: true });
      const buffer = new Uint8Array(agent.recordSize * 4096);
      for (;;) {
        const { bytes, position } = await agent.poll(buffer, 0);
        if (bytes === 0) break;
        agent.commit(position);
      }
      await agent.poll(buffer, 1); // takes a wakeup left from before the drain, if any
      // 5 000 connections: 10 000 records, 2.7 MiB, past the first two steps. Nothing is
      // committed, so the data waiting only grows: each poll returns at the next step.
      const churning = churn(uniqueLoopbackAddress(), 5000);
      const timeoutMs = 60_000;
      for (const step of ["first", "second"]) {
        const started = performance.now();
        const { bytes } = await agent.poll(buffer, timeoutMs);
        const waited = performance.now() - started;
        assert.ok(waited < timeoutMs / 2, `the ${step} step woke the reader (${waited} ms)`);
        assert.ok(bytes > 0, `the ${step} wakeup found records`);
      }
      await churning;
    }),
);
