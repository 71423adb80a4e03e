/**
 * The agent gives back what it does not need when its shipper goes quiet (ffi/agent.ts's
 * releaseIdleMemory, the shim's fe_release_idle_memory): the compression context, and the C
 * heap's free memory, which glibc otherwise kept after a window was sealed and shipped.
 */
import assert from "node:assert/strict";

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
