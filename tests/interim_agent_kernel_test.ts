/**
 * Interim records from the running agent (issue 14): a loopback connection held open for three
 * batch windows, with traffic in each, is reported by three interim records and one final record
 * per socket end, all with one flow ID; the counters never go down, and the final ones are the
 * payload exactly. And through a collector whose retention is shorter than the connection, both
 * ends are attributed thanks to the interim heartbeats, and would not be without them.
 */
import assert from "node:assert/strict";
import type { FlowJson } from "../lib/json_lines.ts";
import { AgentProcess, delay, kernelTest, setIp } from "./_agent.ts";
import { CollectorProcess } from "./_collector.ts";
import { readEof, readExactly, uniqueLoopbackAddress, writeAll } from "./_traffic.ts";
import { until } from "./_until.ts";

/**
 * Long enough that the test always reacts to one window's pass before the next one's: it reads
 * the agent's JSON lines, which lag behind when the suite's churn fills them (8 s of margin).
 */
const WINDOW = "8s";

kernelTest(
  "a connection open for three windows yields three interim records and one final record per end",
  async () => {
    await using agent = await AgentProcess.start([
      "--batch-interval",
      WINDOW,
      "--interim-interval",
      "1s",
    ]);
    const host = uniqueLoopbackAddress();
    using listener = Deno.listen({ hostname: host, port: 0 });
    const serverPort = (listener.addr as Deno.NetAddr).port;
    const [client, server] = await Promise.all([
      Deno.connect({ hostname: host, port: serverPort }),
      listener.accept(),
    ]);
    const clientPort = (client.localAddr as Deno.NetAddr).port;
    const ofClient = (r: FlowJson) => r.local_port === clientPort && r.remote_port === serverPort;
    const ofServer = (r: FlowJson) => r.local_port === serverPort && r.remote_port === clientPort;
    const interim = (of: (r: FlowJson) => boolean) =>
      agent.records.filter((r) => of(r) && r.record_kind === "interim");

    let sent = 0;
    let answered = 0;
    const expected: { sent: number; answered: number }[] = [];
    for (let window = 1; window <= 3; window++) {
      // Traffic in this window, read whole by the other end before the next pass.
      const [up, down] = [1000 * window + 7, 20_000 * window + 3];
      await Promise.all([writeAll(client, up), readExactly(server, up)]);
      await Promise.all([writeAll(server, down), readExactly(client, down)]);
      sent += up;
      answered += down;
      expected.push({ sent, answered });
      const afterNs = BigInt(Date.now()) * 1_000_000n;
      // The next pass after the traffic: its snapshot counts all of it.
      await until(
        () =>
          interim(ofClient).some((r) => (r.t_end_ns as bigint) > afterNs) &&
          interim(ofServer).some((r) => (r.t_end_ns as bigint) > afterNs),
        `interim records of window ${window} (log: ${agent.stderrLines.join(" | ")})`,
      );
    }
    client.close();
    await readEof(server);
    server.close();
    await agent.waitForRecords((r) => (ofClient(r) || ofServer(r)) && r.record_kind === "final", 2);

    for (
      const [side, of, sentBy, readBy] of [
        ["client", ofClient, "bytes_sent", "bytes_received"],
        ["server", ofServer, "bytes_received", "bytes_sent"],
      ] as const
    ) {
      const records = agent.records.filter(of);
      assert.deepEqual(
        records.map((r) => r.record_kind),
        ["interim", "interim", "interim", "final"],
        `${side}: three interim records, then the final one`,
      );
      assert.equal(new Set(records.map((r) => r.flow_id)).size, 1, `${side}: one flow ID`);
      assert.equal(new Set(records.map((r) => r.t_start_ns)).size, 1, `${side}: one start`);
      for (const [i, r] of records.entries()) {
        assert.equal(r.end, i < 3 ? "open" : "normal", `${side} record ${i}: end`);
        if (i < 3) {
          assert.equal(r[sentBy], expected[i].sent, `${side} window ${i + 1}: ${sentBy}`);
          assert.equal(r[readBy], expected[i].answered, `${side} window ${i + 1}: ${readBy}`);
        }
        if (i === 0) continue;
        const before = records[i - 1];
        assert.ok((r.t_end_ns as bigint) > (before.t_end_ns as bigint), `${side}: later snapshots`);
        for (
          const counter of ["bytes_sent", "bytes_acked", "bytes_received", "segs_out", "segs_in"]
        ) {
          assert.ok(
            (r[counter] as number) >= (before[counter] as number),
            `${side} record ${i}: ${counter} ${r[counter]} went below ${before[counter]}`,
          );
        }
      }
      const final = records[3];
      assert.equal(final[sentBy], sent, `${side}: the final ${sentBy} is the payload`);
      assert.equal(final[readBy], answered, `${side}: the final ${readBy} is the payload`);
    }
    assert.equal(await agent.stop(), 0);
  },
);

/**
 * Runs a collector keeping ownership for 30 s and an agent with 1 s windows, holds a connection
 * between two workloads' addresses open for 45 s, closes it, and returns how the collector
 * attributed its two ends. Each end's range lives on while its next interim record arrives within
 * 30 s of the last one's snapshot. The agent ships every flow on the host: beside the suite's
 * 20,000 flows/s churn its batches arrived over 10 s late once (a 10 s retention broke the chain).
 */
async function attributionOfALongConnection(interimInterval: string): Promise<unknown[][]> {
  const dir = await Deno.makeTempDir({ prefix: "interim_agent_kernel_test_" });
  try {
    await using collector = await CollectorProcess.start(`${dir}/flows.db`, {
      args: ["--retention-seconds", "30"],
    });
    await using agent = await AgentProcess.start([
      ...["--collector-url", collector.batchesUrl, "--batch-interval", "1s"],
      ...["--interim-interval", interimInterval],
    ]);
    const clientIp = uniqueLoopbackAddress();
    const serverIp = uniqueLoopbackAddress();
    await setIp(agent.pinDir, clientIp, "workload-client");
    await setIp(agent.pinDir, serverIp, "workload-server");
    using listener = Deno.listen({ hostname: serverIp, port: 0 });
    const { default: net } = await import("node:net");
    const client = net.connect({
      host: serverIp,
      port: (listener.addr as Deno.NetAddr).port,
      localAddress: clientIp,
    });
    const server = await listener.accept();
    await delay(45_000); // past the collector's retention, and its pruning every 7.5 s
    const closed = new Promise((resolve) => client.on("close", resolve).resume());
    client.end();
    await readEof(server);
    server.close();
    await closed;
    let flows: Record<string, unknown>[] = [];
    await until(async () => {
      flows = await collector.flows({ ip: serverIp });
      return flows.length === 2 && flows.every((f) => f.state === "closed");
    }, () => `both ends of the connection closed in the collector (${JSON.stringify(flows)})`);
    assert.equal(await agent.stop(), 0);
    return flows
      .map((f) => [f.local_workload_id, f.attribution, f.remote_workload_id])
      .sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

kernelTest(
  "a connection longer than the collector's retention is attributed through interim records",
  async () => {
    // One after the other: each collector ingests every flow on the host (the suite's churn
    // included), and two at once weighed on the other kernel tests' agents.
    const withInterim = await attributionOfALongConnection("1s");
    const without = await attributionOfALongConnection("0");
    assert.deepEqual(withInterim, [
      ["workload-client", "attributed", "workload-server"],
      ["workload-server", "attributed", "workload-client"],
    ]);
    assert.deepEqual(without, [
      ["workload-client", "unattributed", null],
      ["workload-server", "unattributed", null],
    ], "without interim records, the same connection is past the collector's horizon");
  },
);
