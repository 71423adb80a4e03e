/**
 * The agent gives back what it does not need: once started, the pages of its executable that only
 * starting read (ffi/agent.ts's releaseExecutablePages, the shim's fe_release_executable_pages);
 * and when its shipper goes quiet (releaseIdleMemory, fe_release_idle_memory), the compression
 * context and the C heap's free memory, which glibc otherwise kept after a window was sealed and
 * shipped.
 */
import assert from "node:assert/strict";
import { AgentProcess, kernelTest } from "./_agent.ts";

Deno.test("fe_release_idle_memory gives freed C heap back to the system", async () => {
  // A process of its own, to measure its RSS alone: it mallocs 400 blocks of 50 KiB (under
  // glibc's mmap threshold, so on the heap), touches them, frees all but the last (so the heap's
  // top stays in use and glibc's own trimming cannot give them back), and releases.
  const agent = new URL("../ffi/agent.ts", import.meta.url).href;
  const script = `
    import { releaseIdleMemory } from ${JSON.stringify(agent)};
    const libc = Deno.dlopen("libc.so.6", {
      malloc: { parameters: ["usize"], result: "pointer" },
      memset: { parameters: ["pointer", "i32", "usize"], result: "pointer" },
      free: { parameters: ["pointer"], result: "void" },
    }).symbols;
    const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))[1]);
    const blocks = [];
    for (let i = 0; i < 400; i++) {
      const block = libc.malloc(50 * 1024);
      libc.memset(block, 1, 50 * 1024);
      blocks.push(block);
    }
    for (const block of blocks.slice(0, -1)) libc.free(block);
    const before = rss();
    const released = releaseIdleMemory();
    console.log(JSON.stringify({ before, after: rss(), released }));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const { before, after, released } = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(released, true, "glibc reports memory given back");
  assert.ok(
    before - after >= 15 * 1024,
    `RSS ${before} KiB before the release, ${after} KiB after: at least 15 MiB of the 19.5 freed should go`,
  );
});

Deno.test("fe_release_executable_pages gives back what starting read of the executable", async () => {
  // The agent's executable is mapped by the agent alone, and only pages no other process maps
  // are paged out, so the child runs from a copy of deno: the test runner maps the original.
  // The copy sits on the checkout's file system (a tmpfs copy would be shared memory, not page
  // cache).
  const dir = Deno.makeTempDirSync({ dir: new URL("../build", import.meta.url).pathname });
  try {
    const exe = `${dir}/deno`;
    Deno.copyFileSync(Deno.execPath(), exe);
    const agent = new URL("../ffi/agent.ts", import.meta.url).href;
    const script = `
      import { releaseExecutablePages } from ${JSON.stringify(agent)};
      const exe = Deno.execPath();
      // KiB of the executable's pages in this process's RSS, and the size of its read-only mappings.
      const executable = () => {
        let rss = 0, readOnly = 0, mapping;
        for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\\n")) {
          const head = /^([0-9a-f]+)-([0-9a-f]+) (\\S+) \\S+ \\S+ \\S+\\s*(.*)$/.exec(line);
          if (head) {
            mapping = head[4] === exe;
            if (mapping && head[3][1] !== "w") readOnly += parseInt(head[2], 16) - parseInt(head[1], 16);
          } else if (mapping && line.startsWith("Rss:")) rss += Number(line.split(/\\s+/)[1]);
        }
        return { rss, readOnly };
      };
      const before = executable();
      const advised = releaseExecutablePages();
      console.log(JSON.stringify({ before: before.rss, after: executable().rss, advised, readOnly: before.readOnly }));
    `;
    const out = await new Deno.Command(exe, {
      args: ["eval", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const { before, after, advised, readOnly } = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(advised, readOnly, "every read-only mapping of the executable is advised");
    assert.ok(
      after <= before / 2,
      `the executable held ${before} KiB of RSS before the release and ${after} KiB after: most of what starting read should go`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

kernelTest("a started agent pages out its executable, once", async () => {
  const agent = await AgentProcess.start(["--output", "none", "--log-level", "debug"]);
  try {
    // The release follows the capturing line, once the reader, passes and watchers run; a failed
    // one logs "Cannot page out the executable" instead.
    const line = await agent.waitForLog(/executable/);
    const advisedMiB = Number(/Paged out the executable's (\d+) MiB/.exec(line)?.[1]);
    assert.ok(advisedMiB > 0, line);
    assert.equal(await agent.stop(), 0);
    assert.equal(agent.stderrLines.filter((l) => l.includes("executable")).length, 1);
  } finally {
    await agent.stop();
  }
});
