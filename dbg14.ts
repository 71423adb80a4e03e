import { Agent } from "./ffi/agent.ts";
import { RECORD_SIZE } from "./lib/decode.ts";
using agent = Agent.open({ pinDir: "/sys/fs/bpf/flowexporter-test-dbg14", noPin: true, noSeed: true });
console.log("opened");
const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const conns = [];
for (let i = 0; i < Number(Deno.args[0]); i++) { const c = await Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port }); conns.push(c, await l.accept()); }
console.log("connected");
const n = await agent.snapshot(0n, new Uint8Array(Number(Deno.args[1]) * RECORD_SIZE), (b) => {});
console.log("records", n);
