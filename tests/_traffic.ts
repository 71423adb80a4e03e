/**
 * Loopback traffic with known endpoints and byte counts, for kernel tests.
 *
 * @module
 */
import net from "node:net";

/** Endpoints and wall-clock bounds of one test connection. */
export interface Exchange {
  clientPort: number;
  serverPort: number;
  /** Wall clock before the connect, ns since the epoch. */
  beforeNs: bigint;
  /** Wall clock after both sides closed, ns since the epoch. */
  afterNs: bigint;
}

/** Wall clock now, ns since the epoch (ms resolution, widened to bound kernel times). */
export function wallNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

async function readExactly(conn: Deno.Conn, n: number): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  for (let got = 0; got < n;) {
    const r = await conn.read(buf.subarray(0, Math.min(buf.length, n - got)));
    if (r === null) throw new Error(`Connection closed after ${got} of ${n} bytes`);
    got += r;
  }
}

async function writeAll(conn: Deno.Conn, n: number): Promise<void> {
  const payload = new Uint8Array(n).fill(0x61);
  for (let off = 0; off < n;) off += await conn.write(payload.subarray(off));
}

async function readEof(conn: Deno.Conn): Promise<void> {
  const r = await conn.read(new Uint8Array(16));
  if (r !== null) throw new Error(`Expected EOF, read ${r} bytes`);
}

/**
 * Connects to a fresh listener on `host`, sends `clientBytes` one way and
 * `serverBytes` back, and closes with `closer` closing first.
 */
export async function exchange(
  host: string,
  clientBytes: number,
  serverBytes: number,
  closer: "client" | "server",
): Promise<Exchange> {
  using listener = Deno.listen({ hostname: host, port: 0 });
  const serverPort = (listener.addr as Deno.NetAddr).port;
  const beforeNs = wallNs() - 1_000_000n;
  const client = await Deno.connect({ hostname: host, port: serverPort });
  const server = await listener.accept();
  const clientPort = (client.localAddr as Deno.NetAddr).port;
  await Promise.all([writeAll(client, clientBytes), readExactly(server, clientBytes)]);
  await Promise.all([writeAll(server, serverBytes), readExactly(client, serverBytes)]);
  const [first, second] = closer === "client" ? [client, server] : [server, client];
  first.close();
  await readEof(second);
  second.close();
  // The CLOSE transition of the first closer waits for the peer's FIN: give the kernel a moment.
  await new Promise((r) => setTimeout(r, 50));
  return { clientPort, serverPort, beforeNs, afterNs: wallNs() + 1_000_000n };
}

/** A connection the client aborts with RST (SO_LINGER 0) after sending `clientBytes`. */
export async function resetByClient(host: string, clientBytes: number): Promise<Exchange> {
  const beforeNs = wallNs() - 1_000_000n;
  const server = net.createServer();
  const serverSide = new Promise<string>((resolve) => {
    server.on("connection", (s) => {
      s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
      s.on("close", () => resolve("closed"));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const serverPort = (server.address() as net.AddressInfo).port;
  const client = net.connect(serverPort, host);
  await new Promise<void>((resolve) => client.on("connect", resolve));
  const clientPort = client.localPort!;
  await new Promise<void>((resolve) => client.write(new Uint8Array(clientBytes), () => resolve()));
  await new Promise((r) => setTimeout(r, 50));
  client.resetAndDestroy();
  const outcome = await serverSide;
  if (outcome !== "ECONNRESET") throw new Error(`Server saw ${outcome}, not ECONNRESET`);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return { clientPort, serverPort, beforeNs, afterNs: wallNs() + 1_000_000n };
}

/** A port on `host` with no listener: bound and released, so nothing else took it just now. */
export function closedPort(host: string): number {
  const listener = Deno.listen({ hostname: host, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Connects to a closed port and checks that the kernel refused it. */
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
