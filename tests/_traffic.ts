/**
 * Loopback traffic with known endpoints and byte counts, for kernel tests.
 * Nothing here sleeps to order events: each step waits for what it needs
 * (bytes read, EOF, an error), and the time bounds a test checks a record
 * against are taken around the traffic and after the record arrived.
 *
 * @module
 */
import net from "node:net";
import type { FlowJson } from "../lib/json_lines.ts";
import { testNamespace } from "./_netns.ts";
import { run } from "./_run.ts";

/** Endpoints of one test connection and the wall clock before it began. */
export interface Exchange {
  clientPort: number;
  serverPort: number;
  /** Wall clock before the connect, ns since the epoch (a record cannot start earlier). */
  beforeNs: bigint;
}

/** Wall clock now, ns since the epoch (ms resolution: widen it to bound kernel times). */
function wallNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/** A lower bound for kernel times from now on: the wall clock, less its resolution. */
export function lowerBoundNs(): bigint {
  return wallNs() - 1_000_000n;
}

/**
 * An upper bound for the times of every record received so far: take it once the
 * record arrived (a flow cannot end after its record was read). Widened by the
 * wall clock's resolution.
 */
export function upperBoundNs(): bigint {
  return wallNs() + 1_000_000n;
}

/**
 * A loopback IPv4 address of its own: 127.a.b.c at random, outside 127.0.x.x and
 * the other fixed ranges tests use. Nothing else binds it, so a test that listens
 * there or connects there owns every socket on it, even beside another run of the
 * same suite.
 */
export function uniqueLoopbackAddress(): string {
  const [a, b, c] = crypto.getRandomValues(new Uint8Array(3));
  return `127.${100 + (a % 100)}.${b}.${1 + (c % 254)}`;
}

/**
 * A port for a server that a test must name before the server starts, or start
 * again after a crash: random, and below the ephemeral range (32768 and up), so
 * the kernel never hands it to a connect or a `listen` on port 0 in the meantime.
 * Where the server can listen on `uniqueLoopbackAddress()`, nothing else binds
 * the pair at all; prefer that, and port 0 when the number need not be known
 * before the server starts.
 */
export function namedServerPort(): number {
  const [port] = crypto.getRandomValues(new Uint16Array(1));
  return 10_000 + (port % 20_000);
}

/**
 * An endpoint nothing listens on: port 1 (privileged, never ephemeral) of a
 * loopback address of its own. A connect there is refused, and its record is the
 * only one with this remote address and port.
 */
export function unreachableEndpoint(): { host: string; port: number } {
  return { host: uniqueLoopbackAddress(), port: 1 };
}

/** Reads exactly `n` bytes from `conn`; throws if it ends first. */
export async function readExactly(conn: Deno.Conn, n: number): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  for (let got = 0; got < n;) {
    const r = await conn.read(buf.subarray(0, Math.min(buf.length, n - got)));
    if (r === null) throw new Error(`Connection closed after ${got} of ${n} bytes`);
    got += r;
  }
}

/** Writes `n` bytes (0x61) to `conn`. */
export async function writeAll(conn: Deno.Conn, n: number): Promise<void> {
  const payload = new Uint8Array(n).fill(0x61);
  for (let off = 0; off < n;) off += await conn.write(payload.subarray(off));
}

/** Reads from `conn` and expects the end of the stream. */
export async function readEof(conn: Deno.Conn): Promise<void> {
  const r = await conn.read(new Uint8Array(16));
  if (r !== null) throw new Error(`Expected EOF, read ${r} bytes`);
}

/**
 * Connects to a fresh listener on `host`, sends `clientBytes` one way and
 * `serverBytes` back, and closes with `closer` closing first. Resolves once both
 * sides closed; the kernel finishes the close on its own time, so wait for the
 * records rather than for a moment.
 */
export async function exchange(
  host: string,
  clientBytes: number,
  serverBytes: number,
  closer: "client" | "server",
): Promise<Exchange> {
  using listener = Deno.listen({ hostname: host, port: 0 });
  const serverPort = (listener.addr as Deno.NetAddr).port;
  const beforeNs = lowerBoundNs();
  const client = await Deno.connect({ hostname: host, port: serverPort });
  const server = await listener.accept();
  const clientPort = (client.localAddr as Deno.NetAddr).port;
  await Promise.all([writeAll(client, clientBytes), readExactly(server, clientBytes)]);
  await Promise.all([writeAll(server, serverBytes), readExactly(client, serverBytes)]);
  const [first, second] = closer === "client" ? [client, server] : [server, client];
  first.close();
  await readEof(second);
  second.close();
  return { clientPort, serverPort, beforeNs };
}

/**
 * A connection the client aborts with RST (SO_LINGER 0) once the server has read
 * all `clientBytes` it sent: the reset cuts nothing in flight to the server, and
 * the server sees ECONNRESET.
 */
export async function resetByClient(host: string, clientBytes: number): Promise<Exchange> {
  const beforeNs = lowerBoundNs();
  const server = net.createServer();
  const received = Promise.withResolvers<void>();
  const serverSide = new Promise<string>((resolve) => {
    server.once("connection", (s) => {
      let got = 0;
      s.on("data", (chunk: Uint8Array) => {
        got += chunk.length;
        if (got >= clientBytes) received.resolve();
      });
      s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
      s.on("close", () => {
        received.reject(new Error(`The server read ${got} of ${clientBytes} bytes, then closed`));
        resolve("closed");
      });
    });
  });
  try {
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    const serverPort = (server.address() as net.AddressInfo).port;
    const client = net.connect(serverPort, host);
    await new Promise<void>((resolve, reject) => {
      client.once("connect", resolve);
      client.once("error", reject);
    });
    const clientPort = client.localPort!;
    client.write(new Uint8Array(clientBytes));
    await received.promise;
    client.resetAndDestroy();
    const outcome = await serverSide;
    if (outcome !== "ECONNRESET") throw new Error(`Server saw ${outcome}, not ECONNRESET`);
    return { clientPort, serverPort, beforeNs };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** What {@linkcode reconnect} did. */
export interface Reconnect {
  /** Where the first connect went. */
  first: { host: string; port: number };
  /** The listener the second connect reached, and the client's port then. */
  serverPort: number;
  clientPort: number;
  beforeNs: bigint;
}

/**
 * One IPv4 socket, two connections. The first connect() is `refused` (an endpoint nothing
 * listens on), or reaches a listener and is `disconnected` (connect(AF_UNSPEC), which resets
 * it). Then connect() again, on the same socket, to a listener on `host`; the client sends one
 * byte and closes first. Deno opens a new socket per connect, so this one is made through libc,
 * as a client library that retries on the same descriptor does.
 */
export async function reconnect(
  host: string,
  first: "refused" | "disconnected",
): Promise<Reconnect> {
  const libc = Deno.dlopen("libc.so.6", {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    connect: { parameters: ["i32", "buffer", "u32"], result: "i32", nonblocking: true },
    getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
    close: { parameters: ["i32"], result: "i32" },
  });
  try {
    return await connectTwice(libc.symbols, host, first);
  } finally {
    libc.close();
  }
}

async function connectTwice(
  libc: {
    socket(domain: number, type: number, protocol: number): number;
    connect(fd: number, address: Uint8Array, length: number): Promise<number>;
    getsockname(fd: number, address: Uint8Array, length: Uint32Array): number;
    write(fd: number, bytes: Uint8Array, length: bigint): number | bigint;
    close(fd: number): number;
  },
  host: string,
  firstKind: "refused" | "disconnected",
): Promise<Reconnect> {
  const AF_UNSPEC = 0, AF_INET = 2, SOCK_STREAM = 1;
  const sockaddr = (ip: string, port: number, family = AF_INET) => {
    const out = new Uint8Array(16);
    const view = new DataView(out.buffer);
    view.setUint16(0, family, true);
    view.setUint16(2, port, false);
    out.set(ip.split(".").map(Number), 4);
    return out;
  };
  // The first connection's listener: on an address of its own, so that its record is the only
  // one with this remote address.
  using firstListener = firstKind === "disconnected"
    ? Deno.listen({ hostname: uniqueLoopbackAddress(), port: 0 })
    : undefined;
  const first = firstListener === undefined ? unreachableEndpoint() : {
    host: (firstListener.addr as Deno.NetAddr).hostname,
    port: (firstListener.addr as Deno.NetAddr).port,
  };
  using listener = Deno.listen({ hostname: host, port: 0 });
  const serverPort = (listener.addr as Deno.NetAddr).port;
  const beforeNs = lowerBoundNs();
  const fd = libc.socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw new Error("Cannot create a socket through libc");
  let open = true;
  const closeClient = () => {
    if (open) libc.close(fd);
    open = false;
  };
  try {
    const connected = await libc.connect(fd, sockaddr(first.host, first.port), 16) === 0;
    if (connected !== (firstListener !== undefined)) {
      throw new Error(`The first connect() to ${first.host}:${first.port} did not go as planned`);
    }
    if (firstListener !== undefined) {
      const server = await firstListener.accept();
      if (await libc.connect(fd, sockaddr("0.0.0.0", 0, AF_UNSPEC), 16) !== 0) {
        throw new Error("connect(AF_UNSPEC) did not disconnect the socket");
      }
      // The disconnect reset the connection: the server reads the reset.
      await readEof(server).catch(() => {});
      server.close();
    }
    if (await libc.connect(fd, sockaddr(host, serverPort), 16) !== 0) {
      throw new Error(`The second connect() of one socket to ${host}:${serverPort} failed`);
    }
    const local = new Uint8Array(16);
    libc.getsockname(fd, local, Uint32Array.of(16));
    const clientPort = new DataView(local.buffer).getUint16(2, false);
    const server = await listener.accept();
    if (Number(libc.write(fd, Uint8Array.of(1), 1n)) !== 1) throw new Error("Cannot write");
    await readExactly(server, 1);
    closeClient();
    await readEof(server);
    server.close();
    return { first, serverPort, clientPort, beforeNs };
  } finally {
    closeClient();
  }
}

/** Connects to an endpoint nothing listens on and checks that the kernel refused it. */
export async function connectRefused(host: string, port: number): Promise<void> {
  try {
    const conn = await Deno.connect({ hostname: host, port });
    conn.close();
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) return;
    throw err;
  }
  throw new Error(`Port ${port} on ${host} accepted a connection`);
}

/**
 * `n` short connections to a listener on `host`, `concurrency` at a time: the
 * server closes first, the client reads EOF and closes. Returns the server port.
 */
export async function churn(host: string, n: number, concurrency = 8): Promise<number> {
  using listener = Deno.listen({ hostname: host, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const serving = (async () => {
    for (let i = 0; i < n; i++) (await listener.accept()).close();
  })();
  let next = 0;
  const client = async () => {
    while (next++ < n) {
      const conn = await Deno.connect({ hostname: host, port });
      await readEof(conn);
      conn.close();
    }
  };
  await Promise.all([serving, ...Array.from({ length: concurrency }, client)]);
  return port;
}

/** A grid of listeners for the C churn generator: `addrs` addresses from `firstAddr` × `ports`. */
export interface ChurnGrid {
  firstAddr: string;
  addrs: number;
  portBase: number;
  ports: number;
}

/** What the C churn generator reports (bench/churn.c). */
export interface ChurnResult {
  connections: number;
  /** Connects that failed before their SYN: no socket state changed, so no record. */
  unsent: number;
  accepted: number;
  /** Client sockets that started a connect plus accepted ones: one record each. */
  sockets_closed: number;
}

/** A socket of the grid: a flow identity and which side it was. */
export interface GridSocket {
  flowId: string;
  side: "server" | "client";
}

/** True when `ip`:`port` (as a JSON line has them) is a listener of the grid. */
export function onGrid(grid: ChurnGrid, ip: unknown, port: unknown): boolean {
  const prefix = grid.firstAddr.slice(0, grid.firstAddr.lastIndexOf(".") + 1);
  return typeof ip === "string" && ip.startsWith(prefix) &&
    Number(ip.slice(prefix.length)) <= grid.addrs && (port as number) >= grid.portBase &&
    (port as number) < grid.portBase + grid.ports;
}

/** The grid socket a JSON line is of, if any. */
export function gridSocket(grid: ChurnGrid, r: FlowJson): GridSocket | undefined {
  // Server sockets have their local end on the grid; client sockets, their remote end.
  if (onGrid(grid, r.local_ip, r.local_port)) {
    return { flowId: r.flow_id as string, side: "server" };
  }
  if (onGrid(grid, r.remote_ip, r.remote_port)) {
    return { flowId: r.flow_id as string, side: "client" };
  }
  return undefined;
}

/** Grid sockets counted by side, each once, and the records that repeated one. */
export interface GridTally {
  server: number;
  client: number;
  duplicates: number;
}

/** Each grid socket once, and how many records repeated a flow ID already seen. */
export function tally(sockets: GridSocket[]): GridTally {
  const seen = new Map<string, GridSocket>();
  let duplicates = 0;
  for (const s of sockets) {
    if (seen.has(s.flowId)) duplicates++;
    else seen.set(s.flowId, s);
  }
  const unique = [...seen.values()];
  return {
    server: unique.filter((s) => s.side === "server").length,
    client: unique.filter((s) => s.side === "client").length,
    duplicates,
  };
}

const CHURN = new URL("../build/churn", import.meta.url).pathname;

/**
 * TCP states a socket leaves only by a later close: while one of the grid's sockets is in
 * one, its record is still to come. TIME_WAIT follows a close; SYN_RECV here is a request
 * socket no one accepted, which is not counted (and may wait a minute for SYN-ACK retries).
 */
const CLOSING_STATES = [
  "syn-sent",
  "established",
  "fin-wait-1",
  "fin-wait-2",
  "close-wait",
  "last-ack",
  "closing",
];

/**
 * Runs the C churn generator (`make test` builds it from bench/churn.c) on `grid`, at `rate`
 * connections/s for `seconds`, and resolves once the kernel has closed every socket it counts.
 * The generator exits when its last client has closed, but a client's close ends only when the
 * server's ACK of its FIN arrives: on a busy host (a retransmit after a dropped loopback packet)
 * that is a retransmission timeout later, after an agent stopped right away would have drained.
 *
 * It runs in a network namespace of its own (the agents capture every namespace): the TCP socket
 * iterator the agents of other tests seed with at start walks only theirs, so it never meets
 * the churn's connection requests, which most kernels' iterator can take a reference on while
 * the kernel sets them up (CVE-2026-74714 in docs/operations.md).
 */
export async function runChurn(
  grid: ChurnGrid,
  { seconds, rate }: { seconds: number; rate: number },
): Promise<ChurnResult> {
  await using ns = await testNamespace();
  const out = await new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns.name,
      CHURN,
      `--duration=${seconds}`,
      `--rate=${rate}`,
      `--first-addr=${grid.firstAddr}`,
      `--addrs=${grid.addrs}`,
      `--port-base=${grid.portBase}`,
      `--ports=${grid.ports}`,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output().catch((error) => {
    throw new Error(`Cannot run ${CHURN} (make test builds it from bench/churn.c): ${error}`);
  });
  if (!out.success) throw new Error(`${CHURN} failed (exit ${out.code})`);
  const result: ChurnResult = JSON.parse(new TextDecoder().decode(out.stdout));
  await untilGridClosed(grid.firstAddr, { netns: ns.name });
  return result;
}

/**
 * The sockets to or from the /24 of `firstAddr` (a churn grid's) in a state that a close still
 * ends, each as "local peer", in network namespace `netns` (the caller's when undefined).
 */
export async function gridSockets(firstAddr: string, netns?: string): Promise<Set<string>> {
  const net = `${firstAddr.slice(0, firstAddr.lastIndexOf("."))}.0/24`;
  const args = ["-Htan", ...CLOSING_STATES.flatMap((s) => ["state", s])];
  args.push(`( src ${net} or dst ${net} )`);
  const [command, ...prefix] = netns ? ["ip", "netns", "exec", netns, "ss"] : ["ss"];
  const lines = (await run(command, ...prefix, ...args)).trim().split("\n").filter(Boolean);
  // State (when more than one is asked for), Recv-Q, Send-Q, local, peer: the endpoints name it.
  return new Set(lines.map((line) => line.trim().split(/\s+/).slice(-2).join(" ")));
}

/**
 * Waits until no socket to or from the /24 of `firstAddr` (a churn grid's), in network namespace
 * `netns` (the caller's when undefined), is in a state that a close still ends, but those of
 * `before` (what was open there before the churn began): then
 * the record of every socket the generator counted is out. That can take the kernel's FIN
 * timeout: a server socket in FIN_WAIT2 (a full one, when the ACK of its FIN came while its lock
 * was held: its record is still to come) waits for the client's FIN, which a busy host sometimes
 * loses, until the timeout ends it. A socket of `before` is no socket of this churn: one an
 * earlier run left stuck, as the kernel's TCP iterator bug did once on this machine (kernel
 * 6.18.44, CVE-2026-74714 in docs/operations.md: a CLOSE_WAIT socket with no owner, for good).
 */
export async function untilGridClosed(
  firstAddr: string,
  { before = new Set(), netns }: { before?: Set<string>; netns?: string } = {},
): Promise<void> {
  const finTimeoutS = Number(Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_fin_timeout"));
  const timeoutMs = (finTimeoutS + 15) * 1000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = [...await gridSockets(firstAddr, netns)].filter((socket) => !before.has(socket));
    if (open.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `${open.length} sockets of the churn on the grid of ${firstAddr} still open after ${timeoutMs} ms: ${
          open.slice(0, 3).join("; ")
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A busy loop on one CPU (CPU 0 when `taskset` is there), the load under which the
 * suite must stay green: loopback retransmits, and the kernel skips tracing
 * programs that would nest. Stop it with `await using` (it is killed and reaped).
 */
export function cpuHog(): AsyncDisposable & { pid: number } {
  const loop = ["sh", "-c", "while :; do :; done"];
  const spawn = (cmd: string, args: string[]) =>
    new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" }).spawn();
  let child: Deno.ChildProcess;
  try {
    child = spawn("taskset", ["-c", "0", ...loop]);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    child = spawn(loop[0], loop.slice(1));
  }
  return {
    pid: child.pid,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
    },
  };
}

/** One loopback connection held open, and the payload each side has read so far. */
export class HeldConnection {
  clientRead = 0;
  serverRead = 0;

  private constructor(
    readonly client: Deno.Conn,
    readonly server: Deno.Conn,
    readonly beforeNs: bigint,
    readonly establishedNs: bigint,
  ) {}

  static async open(listener: Deno.Listener, host: string): Promise<HeldConnection> {
    const beforeNs = lowerBoundNs();
    const port = (listener.addr as Deno.NetAddr).port;
    const [client, server] = await Promise.all([
      Deno.connect({ hostname: host, port }),
      listener.accept(),
    ]);
    return new HeldConnection(client, server, beforeNs, upperBoundNs());
  }

  get clientPort(): number {
    return (this.client.localAddr as Deno.NetAddr).port;
  }

  get serverPort(): number {
    return (this.server.localAddr as Deno.NetAddr).port;
  }

  /** Sends `up` bytes to the server and `down` back; resolves once each side read them. */
  async talk(up: number, down: number): Promise<void> {
    await Promise.all([writeAll(this.client, up), readExactly(this.server, up)]);
    this.serverRead += up;
    await Promise.all([writeAll(this.server, down), readExactly(this.client, down)]);
    this.clientRead += down;
  }

  /** The client closes first; resolves once both sides closed. */
  async close(): Promise<void> {
    this.client.close();
    await readEof(this.server);
    this.server.close();
  }
}

/** build/hold_connections (bench/hold_connections.c): many idle loopback connections, held. */
export const HOLDER = new URL("../build/hold_connections", import.meta.url).pathname;

/**
 * A running build/hold_connections and the connections it holds, in a process of its own: its
 * descriptors count against its own RLIMIT_NOFILE, not the caller's.
 */
export class ConnectionHolder implements AsyncDisposable {
  private constructor(readonly child: Deno.ChildProcess) {}

  /** `cgroup`: a cgroup v2 directory the holder joins before its first socket. */
  static async start(
    addr: string,
    ports: number,
    connections: number,
    cgroup?: string,
  ): Promise<ConnectionHolder> {
    const args = ["--addr", addr, "--ports", String(ports), "--connections", String(connections)];
    // Through a shell that joins the cgroup first, so that every socket of the holder is in it.
    const [program, argv] = cgroup
      ? ["sh", ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, HOLDER, ...args]]
      : [HOLDER, args];
    const child = new Deno.Command(program, {
      args: argv,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.getReader();
    const decoder = new TextDecoder();
    let line = "";
    try {
      while (!line.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) {
          throw new Error(`hold_connections exited before it held ${connections} connections`);
        }
        line += decoder.decode(value, { stream: true });
      }
    } catch (error) {
      child.kill("SIGKILL");
      await child.status;
      throw error;
    }
    // It prints nothing more.
    await reader.cancel();
    const held = (JSON.parse(line) as { connections: number }).connections;
    if (held !== connections) throw new Error(`hold_connections held ${held} of ${connections}`);
    return new ConnectionHolder(child);
  }

  /** Closes the connections (stdin's end tells the holder to) and waits for it to exit. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.child.stdin.close().catch(() => this.child.kill("SIGKILL"));
    const status = await this.child.status;
    if (!status.success) console.error(`hold_connections exited with ${status.code}`);
  }
}
