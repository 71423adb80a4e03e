/**
 * The capture path against this machine's kernel: the real BPF program, the
 * shim, the poll worker and the decoder, observed through the agent's JSON
 * lines while the test makes connections with known endpoints.
 */
import assert from "node:assert/strict";
import type { FlowJson } from "../lib/json_lines.ts";
import { AgentProcess, kernelTest, socketRecord } from "./_agent.ts";
import {
  closedPort,
  connectRefused,
  type Exchange,
  exchange,
  resetByClient,
  wallNs,
} from "./_traffic.ts";

const CLIENT_BYTES = 100_000;
const SERVER_BYTES = 40_000;

function assertWithin(r: FlowJson, x: Exchange): void {
  const start = r.t_start_ns as bigint;
  const end = r.t_end_ns as bigint;
  assert.ok(start <= end, `t_start ${start} > t_end ${end}`);
  assert.ok(start >= x.beforeNs, `t_start ${start} before the test began (${x.beforeNs})`);
  assert.ok(end <= x.afterNs, `t_end ${end} after the test ended (${x.afterNs})`);
}

/** Both local sockets of a loopback connection, exactly one record each. */
async function pair(agent: AgentProcess, x: Exchange): Promise<[FlowJson, FlowJson]> {
  const client = await agent.waitForRecords(socketRecord(x.clientPort, x.serverPort), 1);
  const server = await agent.waitForRecords(socketRecord(x.serverPort, x.clientPort), 1);
  assert.equal(client.length, 1, "one record for the client socket");
  assert.equal(server.length, 1, "one record for the server socket");
  return [client[0], server[0]];
}

async function assertCleanExchange(
  agent: AgentProcess,
  host: string,
  closer: "client" | "server",
): Promise<void> {
  const x = await exchange(host, CLIENT_BYTES, SERVER_BYTES, closer);
  const [client, server] = await pair(agent, x);
  const family = host.includes(":") ? 6 : 4;
  for (const r of [client, server]) {
    assert.equal(r.family, family);
    assert.equal(r.local_ip, host);
    assert.equal(r.remote_ip, host);
    assert.equal(r.end, "normal");
    assert.equal(r.error, 0);
    assert.equal(r.seeded, false);
    assertWithin(r, x);
  }
  assert.equal(client.direction, "outbound");
  assert.equal(server.direction, "inbound");
  // Mirror images: what one side sent, the other received, in payload bytes.
  assert.equal(client.bytes_sent, CLIENT_BYTES);
  assert.equal(client.bytes_acked, CLIENT_BYTES);
  assert.equal(client.bytes_received, SERVER_BYTES);
  assert.equal(server.bytes_sent, SERVER_BYTES);
  assert.equal(server.bytes_acked, SERVER_BYTES);
  assert.equal(server.bytes_received, CLIENT_BYTES);
  // The listener, not the accepted socket, handles part of the handshake: mirrors within one.
  const near = (a: unknown, b: unknown) => Math.abs((a as number) - (b as number)) <= 1;
  assert.ok(near(client.segs_out, server.segs_in), `${client.segs_out} vs ${server.segs_in}`);
  assert.ok(near(client.segs_in, server.segs_out), `${client.segs_in} vs ${server.segs_out}`);
  // The side that closes first ends in FIN_WAIT2 (then TIME_WAIT); the other from LAST_ACK.
  const [first, second] = closer === "client" ? [client, server] : [server, client];
  assert.equal(first.close_state, "FIN_WAIT2");
  assert.equal(second.close_state, "LAST_ACK");
  assert.ok((client.srtt_us as number) > 0, "RTT measured");
}

/** The scenarios every transport and attach mode must pass. */
async function coreScenarios(t: Deno.TestContext, agent: AgentProcess): Promise<void> {
  await t.step(
    "IPv4, client closes first: payload bytes each way, one record per socket",
    () => assertCleanExchange(agent, "127.0.0.1", "client"),
  );
  await t.step(
    "IPv4, server closes first",
    () => assertCleanExchange(agent, "127.0.0.1", "server"),
  );
  await t.step("IPv6, client closes first", () => assertCleanExchange(agent, "::1", "client"));
  await t.step("IPv6, server closes first", () => assertCleanExchange(agent, "::1", "server"));
}

kernelTest(
  "agent records every closed TCP socket on the real kernel (ring buffer, tp_btf)",
  async (t) => {
    await using agent = await AgentProcess.start();
    assert.match(agent.stderrLines.join("\n"), /tp_btf, ringbuf/);
    await coreScenarios(t, agent);

    await t.step("a reset (SO_LINGER 0) is recorded on both sides", async () => {
      const x = await resetByClient("127.0.0.1", 5000);
      const [client, server] = await pair(agent, x);
      assert.equal(client.close_state, "ESTABLISHED");
      assert.equal(client.end, "aborted");
      assert.equal(client.bytes_sent, 5000);
      assert.equal(server.end, "reset");
      assert.equal(server.error, 104); // ECONNRESET
      assert.equal(server.bytes_received, 5000);
      assertWithin(client, x);
      assertWithin(server, x);
    });

    await t.step("a failed connect to a closed port is one outbound record", async () => {
      const port = closedPort("127.0.0.1");
      const beforeNs = wallNs() - 1_000_000n;
      await connectRefused("127.0.0.1", port);
      const afterNs = wallNs() + 1_000_000n;
      const match = (r: FlowJson) => r.remote_port === port && r.close_state === "SYN_SENT";
      const [rec, ...more] = await agent.waitForRecords(match, 1);
      assert.equal(more.length, 0);
      assert.equal(rec.direction, "outbound");
      assert.equal(rec.end, "refused");
      assert.equal(rec.error, 111); // ECONNREFUSED
      assert.equal(rec.bytes_sent, 0);
      assert.equal(rec.bytes_received, 0);
      assert.ok((rec.local_port as number) > 0, "the ephemeral port is known at close");
      assertWithin(rec, { clientPort: 0, serverPort: port, beforeNs, afterNs });
      // The listener that never was has no record; no socket listens on `port`.
      assert.equal(agent.records.filter((r) => r.local_port === port).length, 0);
    });

    await t.step("a reused 4-tuple is two flows, each with its own start", async () => {
      const a = await exchange("127.0.0.1", 10, 10, "server");
      const b = await exchange("127.0.0.1", 20, 20, "server");
      const [, serverA] = await pair(agent, a);
      const [, serverB] = await pair(agent, b);
      assert.notEqual(serverA.t_start_ns, serverB.t_start_ns);
      assert.equal(serverB.bytes_received, 20);
    });

    assert.equal(await agent.stop(), 0, "SIGTERM exits 0");
    assert.match(agent.stderrLines.join("\n"), /records \d+, kernel drops 0, recursion misses 0/);
  },
);

kernelTest("the perf buffer fallback passes the core scenarios", async (t) => {
  await using agent = await AgentProcess.start(["--perf-buffer"]);
  assert.match(agent.stderrLines.join("\n"), /perfbuf/);
  await coreScenarios(t, agent);
});

kernelTest("the classic tracepoint fallback passes the core scenarios", async (t) => {
  await using agent = await AgentProcess.start(["--classic-tracepoint"]);
  assert.match(agent.stderrLines.join("\n"), /tracepoint, ringbuf/);
  await coreScenarios(t, agent);
});

kernelTest("sockets open before the agent starts are seeded and still recorded", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serverPort = (listener.addr as Deno.NetAddr).port;
  const client = await Deno.connect({ hostname: "127.0.0.1", port: serverPort });
  const server = await listener.accept();
  const clientPort = (client.localAddr as Deno.NetAddr).port;
  const beforeAgent = wallNs();
  await using agent = await AgentProcess.start();
  const seeded = Number(/(\d+) open sockets seeded/.exec(agent.stderrLines.join("\n"))?.[1]);
  assert.ok(seeded >= 2, `at least our two sockets seeded, got ${seeded}`);
  await client.write(new Uint8Array(300));
  await server.read(new Uint8Array(300));
  client.close();
  server.close();
  listener.close();
  const [rec] = await agent.waitForRecords(socketRecord(clientPort, serverPort), 1);
  assert.equal(rec.seeded, true);
  assert.equal(rec.direction, "unknown");
  assert.ok((rec.t_start_ns as bigint) >= beforeAgent, "t_start is when the agent first saw it");
  // Byte counters are the socket's whole life, not only the part the agent saw.
  assert.equal(rec.bytes_sent, 300);
  const [srv] = await agent.waitForRecords(socketRecord(serverPort, clientPort), 1);
  assert.equal(srv.seeded, true);
});

kernelTest(
  "the program loads while the runtime's sampling profiler signals every millisecond",
  async () => {
    // The verifier gives up when a signal is pending; the shim blocks signals around the load.
    const logDir = await Deno.makeTempDir({ prefix: "flowexporter-prof-" });
    try {
      await using agent = await AgentProcess.start([], {
        DENO_V8_FLAGS: `--prof,--logfile=${logDir}/v8.log`,
      });
      const x = await exchange("127.0.0.1", 10, 20, "client");
      await pair(agent, x);
      const logs = [...Deno.readDirSync(logDir)];
      assert.ok(logs.length > 0, "the profiler ran");
    } finally {
      await Deno.remove(logDir, { recursive: true });
    }
  },
);

/** The C connection-churn generator of the benchmark, built by `make test`. */
const CHURN = new URL("../build/churn", import.meta.url).pathname;

kernelTest("under connection churn every closed socket yields exactly one record", async () => {
  // A grid of its own (127.78.0.1–4 × 2 ports) so other tests' flows never count here.
  const grid = { firstAddr: "127.78.0.1", addrs: 4, portBase: 21000, ports: 2 };
  const onGrid = (ip: unknown, port: unknown) =>
    typeof ip === "string" && ip.startsWith("127.78.0.") &&
    Number(ip.slice(9)) <= grid.addrs && (port as number) >= grid.portBase &&
    (port as number) < grid.portBase + grid.ports;
  await using agent = await AgentProcess.start();
  const out = await new Deno.Command(CHURN, {
    args: [
      ...["--duration", "2", "--rate", "10000", "--first-addr", grid.firstAddr],
      ...[
        "--addrs",
        `${grid.addrs}`,
        "--port-base",
        `${grid.portBase}`,
        "--ports",
        `${grid.ports}`,
      ],
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output().catch((error) => {
    throw new Error(`Cannot run ${CHURN} (make test builds it from bench/churn.c): ${error}`);
  });
  assert.ok(out.success, "the churn generator ran");
  const churn = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.ok(churn.connections > 5_000, `${churn.connections} connections`);
  // Server sockets have their local end on the grid; client sockets, their remote end.
  const server = (r: FlowJson) => onGrid(r.local_ip, r.local_port);
  const client = (r: FlowJson) => onGrid(r.remote_ip, r.remote_port);
  await agent.waitForRecords((r) => server(r) || client(r), churn.sockets_closed, 30_000);
  const servers = agent.records.filter(server);
  const clients = agent.records.filter(client);
  // Exactly one record per socket: ephemeral ports are reused, so count rather than match tuples.
  assert.equal(servers.length, churn.accepted, "one record per accepted socket");
  assert.equal(clients.length, churn.sockets_closed - churn.accepted, "one per client socket");
  assert.ok(servers.every((r) => r.direction === "inbound"));
  assert.ok(clients.every((r) => r.direction === "outbound"));
  assert.ok(agent.records.every((r) => (r.t_start_ns as bigint) <= (r.t_end_ns as bigint)));
  // Records whose CLOSE run the kernel skipped were made at destroy; never more than the misses.
  assert.equal(await agent.stop(), 0);
  const stop = /kernel drops (\d+), recursion misses (\d+), recovered at destroy (\d+)/.exec(
    agent.stderrLines.join("\n"),
  );
  assert.ok(stop, "the stop line reports drops, misses and recoveries");
  const [drops, misses, recoveredByAgent] = stop.slice(1).map(Number);
  assert.equal(drops, 0, "no kernel drops");
  const recovered = [...servers, ...clients].filter((r) => r.close_state === "UNKNOWN").length;
  assert.ok(recovered <= recoveredByAgent, `${recovered} of ours, ${recoveredByAgent} in all`);
  assert.ok(recoveredByAgent <= misses, `${recoveredByAgent} recovered, ${misses} misses`);
});
