/**
 * Test helper: network namespaces of the tests' own, and a connection held inside one, for the
 * sockets the agent meets outside its own namespace.
 *
 * @module
 */
import assert from "node:assert/strict";
import { run } from "./_run.ts";

/**
 * Holds a loopback connection in its network namespace: prints "ready", connects at the first
 * line on stdin and prints its client and server ports, closes everything at the second line.
 */
const HOLDER_SOURCE = `
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
console.log("ready");
await lines.read();
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
const server = await listener.accept();
console.log(client.localAddr.port, listener.addr.port);
await lines.read();
client.close();
server.close();
listener.close();
`;

/** A network namespace of the test's own, loopback up; deleted at the end. */
export async function testNamespace(): Promise<{ name: string } & AsyncDisposable> {
  const name = `flowexporter-test-${crypto.randomUUID().slice(0, 8)}`;
  await run("ip", "netns", "add", name);
  await run("ip", "-n", name, "link", "set", "lo", "up");
  return { name, [Symbol.asyncDispose]: () => run("ip", "netns", "del", name).then(() => {}) };
}

/** A holder (HOLDER_SOURCE) running in namespace `ns`. */
export class NamespaceHolder implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #lines: ReadableStreamDefaultReader<string>;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;

  constructor(ns: string) {
    this.#child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, Deno.execPath(), "eval", HOLDER_SOURCE],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    this.#lines = this.#child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#stdin = this.#child.stdin.getWriter();
  }

  async #line(): Promise<string> {
    const { value } = await this.#lines.read();
    return (value ?? "").trim();
  }

  /** Connects once the holder runs; resolves to the client's and the server's ports. */
  async connect(): Promise<[number, number]> {
    assert.equal(await this.#line(), "ready");
    await this.#stdin.write(new Uint8Array([10]));
    const ports = await this.#line();
    const [client, server] = ports.split(" ").map(Number);
    assert.ok(client > 0 && server > 0, `the holder's ports: ${ports}`);
    return [client, server];
  }

  /** Closes the connection and waits for the holder to exit. */
  async close(): Promise<void> {
    await this.#stdin.write(new Uint8Array([10]));
    await this.#stdin.close();
    assert.ok((await this.#child.status).success, "the holder exits cleanly");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#lines.cancel().catch(() => {});
    try {
      this.#child.kill();
    } catch { /* exited */ }
    await this.#child.status;
  }
}
