/**
 * Workload attribution on the real kernel: the BPF program resolves the local
 * side through the pinned maps (port map, IP map) or the host certificate,
 * once, when the socket's local address and port become known.
 */
import assert from "node:assert/strict";
import net from "node:net";
import type { FlowJson } from "../lib/json_lines.ts";
import { ownCapture } from "../ffi/agent.ts";
import { AgentProcess, delay, kernelTest } from "./_agent.ts";
import { makeCertificate } from "./_certs.ts";
import { testNamespace } from "./_netns.ts";
import { run } from "./_run.ts";
import { namedServerPort, uniqueLoopbackAddress } from "./_traffic.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Runs `flowexporter identity ARGS --pin-dir DIR`; returns its exit code and output. */
async function identity(pinDir: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "identity", ...args, "--pin-dir", pinDir],
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function mustIdentity(pinDir: string, ...args: string[]): Promise<void> {
  const r = await identity(pinDir, ...args);
  assert.equal(r.code, 0, `identity ${args.join(" ")} failed: ${r.stderr}`);
}

/** An open connection from `localAddress[:localPort]` to a listener on `serverHost`. */
async function openConnection(
  localAddress: string,
  serverHost: string,
  localPort?: number,
): Promise<
  {
    client: net.Socket;
    server: net.Socket;
    clientPort: number;
    serverPort: number;
    close(): Promise<void>;
  }
> {
  const listener = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => listener.once("connection", resolve));
  await new Promise<void>((resolve) => listener.listen(0, serverHost, resolve));
  const serverPort = (listener.address() as net.AddressInfo).port;
  const client = net.connect({ host: serverHost, port: serverPort, localAddress, localPort });
  await new Promise<void>((resolve, reject) => {
    client.once("connect", resolve);
    client.once("error", reject);
  });
  const server = await accepted;
  return {
    client,
    server,
    clientPort: client.localPort!,
    serverPort,
    async close() {
      const closed = Promise.all([
        new Promise((r) => client.once("close", r)),
        new Promise((r) => server.once("close", r)),
      ]);
      client.end();
      server.end();
      await closed;
      await new Promise<void>((resolve) => listener.close(() => resolve()));
    },
  };
}

/**
 * In a network namespace: listens on every address, prints the port, connects to 192.0.2.2 on it,
 * prints the client's port once the listener has the connection, and closes both.
 */
const LATE_CONNECT_SOURCE = `
const listener = Deno.listen({ hostname: "0.0.0.0", port: 0 });
console.log(listener.addr.port);
const client = await Deno.connect({ hostname: "192.0.2.2", port: listener.addr.port });
const server = await listener.accept();
console.log(client.localAddr.port);
client.close();
server.close();
listener.close();
`;

function byPorts(local: number, remote: number): (r: FlowJson) => boolean {
  return (r) => r.local_port === local && r.remote_port === remote;
}

/** The host's workload ID as the BPF program reads it: the agent's pinned host_workload map. */
async function hostWorkloadInKernel(pinDir: string): Promise<string> {
  const out = await new Deno.Command("bpftool", {
    args: ["-j", "map", "dump", "pinned", `${ownCapture(pinDir)}/host_workload`],
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const [entry] = JSON.parse(new TextDecoder().decode(out.stdout)) as { value: string[] }[];
  const bytes = entry.value.map((hex) => parseInt(hex, 16));
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(new Uint8Array(end < 0 ? bytes : bytes.slice(0, end)));
}

kernelTest("flows are attributed to workloads in the kernel at capture time", async (t) => {
  const certs = await Deno.makeTempDir();
  const certPath = `${certs}/identity.pem`;
  await makeCertificate(certPath, { uri: "spiffe://test.example/host/node-1", cn: "node-1" });
  await using agent = await AgentProcess.start(["--cert-path", certPath]);
  const pin = agent.pinDir;

  await t.step(
    "two containers on loopback addresses get their workloads from the IP map",
    async () => {
      // Addresses of this test's own, like a container's.
      const [a, b] = [uniqueLoopbackAddress(), uniqueLoopbackAddress()];
      await mustIdentity(pin, "set-ip", a, "workload-a");
      await mustIdentity(pin, "set-ip", b, "workload-b");
      // Client "container" A talks to server "container" B.
      const c = await openConnection(a, b);
      await c.close();
      const [client] = await agent.waitForRecords(byPorts(c.clientPort, c.serverPort), 1);
      const [server] = await agent.waitForRecords(byPorts(c.serverPort, c.clientPort), 1);
      assert.equal(client.local_ip, a);
      assert.equal(client.local_workload_id, "workload-a");
      assert.equal(client.identity_source, "ip-map");
      assert.equal(server.local_ip, b);
      assert.equal(server.local_workload_id, "workload-b");
      assert.equal(server.identity_source, "ip-map");
    },
  );

  await t.step(
    "a flow on an unmapped host address carries the certificate's identity",
    async () => {
      const c = await openConnection("127.0.0.1", "127.0.0.1");
      await c.close();
      const [client] = await agent.waitForRecords(byPorts(c.clientPort, c.serverPort), 1);
      assert.equal(client.local_workload_id, "spiffe://test.example/host/node-1");
      assert.equal(client.identity_source, "host");
    },
  );

  await t.step(
    "the port map tells apart workloads sharing one IPv4 and wins over the IP map",
    async () => {
      // The port map is keyed by local address and port, both named before the connect: an
      // address of this test's own, and ports below the ephemeral range.
      const shared = uniqueLoopbackAddress();
      await mustIdentity(pin, "set-ip", shared, "shared-ip-owner");
      const port = namedServerPort();
      const ports = [port, port + 1];
      await mustIdentity(pin, "set-port", shared, String(ports[0]), "workload-c");
      await mustIdentity(pin, "set-port", shared, String(ports[1]), "workload-d");
      const first = await openConnection(shared, "127.0.0.1", ports[0]);
      const second = await openConnection(shared, "127.0.0.1", ports[1]);
      await first.close();
      await second.close();
      const [c] = await agent.waitForRecords(byPorts(ports[0], first.serverPort), 1);
      const [d] = await agent.waitForRecords(byPorts(ports[1], second.serverPort), 1);
      assert.equal(c.local_workload_id, "workload-c");
      assert.equal(c.identity_source, "port-map");
      assert.equal(d.local_workload_id, "workload-d");
      assert.equal(d.identity_source, "port-map");
      await mustIdentity(pin, "delete-port", shared, String(ports[0]));
      await mustIdentity(pin, "delete-port", shared, String(ports[1]));
      // Without a port entry the IP map decides.
      const third = await openConnection(shared, "127.0.0.1");
      await third.close();
      const [e] = await agent.waitForRecords(byPorts(third.clientPort, third.serverPort), 1);
      assert.equal(e.local_workload_id, "shared-ip-owner");
      assert.equal(e.identity_source, "ip-map");
    },
  );

  await t.step("attribution is fixed when the connection is established", async () => {
    const ip = uniqueLoopbackAddress();
    await mustIdentity(pin, "set-ip", ip, "owner-before");
    const c = await openConnection(ip, "127.0.0.1");
    await mustIdentity(pin, "set-ip", ip, "owner-after");
    await c.close();
    const [rec] = await agent.waitForRecords(byPorts(c.clientPort, c.serverPort), 1);
    assert.equal(rec.local_workload_id, "owner-before");
    const later = await openConnection(ip, "127.0.0.1");
    await later.close();
    const [next] = await agent.waitForRecords(byPorts(later.clientPort, later.serverPort), 1);
    assert.equal(next.local_workload_id, "owner-after");
  });

  await t.step("sock_ops attributes an outbound connection at its connect()", async () => {
    // The connect's SYN goes out of a veth whose peer is down, and is lost, so the socket waits in
    // SYN_SENT. (A permanent neighbour entry sends it at once: one waiting for ARP would hold the
    // retransmission back, then fail the connect.) The owner changes then, and the destination
    // is added to loopback: the SYN's retransmission, a second later, finds the listener.
    await using ns = await testNamespace();
    const ip = (...args: string[]) => run("ip", "-n", ns.name, ...args);
    await ip("link", "add", "fe0", "type", "veth", "peer", "name", "fe1");
    await ip("addr", "add", "192.0.2.1/24", "dev", "fe0");
    await ip("link", "set", "fe0", "up");
    await ip(
      "neigh",
      "add",
      "192.0.2.2",
      "lladdr",
      "02:00:00:00:00:01",
      "dev",
      "fe0",
      "nud",
      "permanent",
    );
    await mustIdentity(pin, "set-ip", "192.0.2.1", "owner-at-connect");
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns.name, Deno.execPath(), "eval", LATE_CONNECT_SOURCE],
      stdout: "piped",
    }).spawn();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      const serverPort = Number((await lines.read()).value);
      const deadline = Date.now() + 10_000;
      while (!(await run("ip", "netns", "exec", ns.name, "ss", "-Htn", "state", "syn-sent"))) {
        assert.ok(Date.now() < deadline, "the connect waits in SYN_SENT within 10 s");
        await delay(20);
      }
      await mustIdentity(pin, "set-ip", "192.0.2.1", "owner-at-established");
      await ip("addr", "add", "192.0.2.2/32", "dev", "lo");
      const clientPort = Number((await lines.read()).value);
      assert.ok((await child.status).success, "the connection was made and closed");
      const [rec] = await agent.waitForRecords(byPorts(clientPort, serverPort), 1);
      assert.equal(rec.local_ip, "192.0.2.1");
      assert.equal(rec.identity_source, "ip-map");
      assert.equal(rec.close_seen_by, "sock_ops", "sock_ops followed the connection");
      assert.equal(rec.local_workload_id, "owner-at-connect");
    } finally {
      await lines.cancel().catch(() => {});
      try {
        child.kill();
      } catch { /* exited */ }
      await child.status;
      await mustIdentity(pin, "delete-ip", "192.0.2.1");
    }
  });

  await t.step("an entry written with bpftool map update pinned is honoured", async () => {
    // key: the IPv4-mapped address (::ffff:a.b.c.d); value: "bpftool-workload" NUL-padded to
    // 128 bytes.
    const ip = uniqueLoopbackAddress();
    const key = [...new Array(10).fill(0), 0xff, 0xff, ...ip.split(".").map(Number)];
    const id = new TextEncoder().encode("bpftool-workload");
    const value = [...id, ...new Array(128 - id.length).fill(0)];
    const hex = (bytes: number[]) => bytes.map((b) => b.toString(16).padStart(2, "0"));
    const out = await new Deno.Command("bpftool", {
      args: [
        "map",
        "update",
        "pinned",
        `${pin}/ip_workload`,
        "key",
        "hex",
        ...hex(key),
        "value",
        "hex",
        ...hex(value),
      ],
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const c = await openConnection(ip, "127.0.0.1");
    await c.close();
    const [rec] = await agent.waitForRecords(byPorts(c.clientPort, c.serverPort), 1);
    assert.equal(rec.local_workload_id, "bpftool-workload");
    assert.equal(rec.identity_source, "ip-map");
    const list = await identity(pin, "list", "--json");
    assert.match(list.stdout, /bpftool-workload/);
  });

  await t.step("a rotated certificate changes the host identity without a restart", async () => {
    await makeCertificate(`${certs}/next.pem`, { cn: "node-1-rotated" });
    await Deno.rename(`${certs}/next.pem`, certPath);
    await agent.waitForLog(/node-1-rotated/, 10_000);
    // The agent logs the new identity, then writes it to the kernel: wait for the kernel's copy.
    const deadline = Date.now() + 10_000;
    while ((await hostWorkloadInKernel(pin)) !== "node-1-rotated") {
      assert.ok(Date.now() < deadline, "the new identity reached the kernel within 10 s");
      await delay(20);
    }
    const c = await openConnection("127.0.0.1", "127.0.0.1");
    await c.close();
    const [rec] = await agent.waitForRecords(byPorts(c.clientPort, c.serverPort), 1);
    assert.equal(rec.local_workload_id, "node-1-rotated");
    assert.equal(rec.identity_source, "host");
  });

  await t.step("invalid input is refused and leaves the maps untouched", async () => {
    const before = (await identity(pin, "list", "--json")).stdout;
    const bad = await identity(pin, "set-ip", "300.1.1.1", "x");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /300\.1\.1\.1/);
    const long = await identity(pin, "set-ip", "127.0.1.9", "w".repeat(200));
    assert.equal(long.code, 2);
    assert.match(long.stderr, /200 bytes/);
    assert.equal((await identity(pin, "list", "--json")).stdout, before);
  });

  await t.step("the pinned maps are root-only", async () => {
    assert.equal((await Deno.stat(pin)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(`${pin}/ip_workload`)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(`${pin}/port_workload`)).mode! & 0o777, 0o600);
    for (const map of ["ip_workload", "port_workload"]) {
      const out = await new Deno.Command("setpriv", {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "bpftool",
          "map",
          "dump",
          "pinned",
          `${pin}/${map}`,
        ],
      }).output();
      assert.notEqual(out.code, 0, `nobody opened ${map}`);
      // Where bpffs is mounted mode=700 (as systemd mounts it), nobody cannot reach the folder
      // either, and bpftool words that EACCES as the folder not being in bpffs.
      assert.match(
        new TextDecoder().decode(out.stderr),
        /Permission denied|Operation not permitted|directory not in bpf file system/,
      );
    }
  });

  await Deno.remove(certs, { recursive: true });
});
