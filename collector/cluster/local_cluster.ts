/**
 * A local cluster for development, tests and the benchmark: three JetStream-enabled
 * `nats-server` nodes and one `clickhouse-server`, on loopback only, with all their data in one
 * temporary directory, on ports the servers pick themselves and this module reads back (nats:
 * its ports file; ClickHouse: the socket its process listens on). {@linkcode LocalCluster.close}
 * stops every process it started, by PID, and removes the directory.
 *
 * A JetStream cluster needs a configured route; with ports picked at start, the nodes have
 * none to name. So a fourth, route-only `nats-server` (`seed`, no JetStream, no streams) starts
 * first and every node routes to it; the nodes then find each other through it. It does not
 * advertise itself to clients. Killing any JetStream node leaves the other two a quorum.
 *
 * Run as a script (`scripts/cluster.sh start`) it prints the URLs as shell variables and keeps
 * the servers until SIGINT or SIGTERM.
 *
 * @example
 * ```ts
 * import { startLocalCluster } from "./local_cluster.ts";
 * await using cluster = await startLocalCluster();
 * console.log(cluster.natsUrls, cluster.clickhouseUrl);
 * ```
 *
 * @module
 */

import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { errorText } from "../../lib/error_text.ts";

/** The servers a local cluster runs; `make` installs them from Debian. */
export const CLUSTER_SERVERS = ["nats-server", "clickhouse-server"] as const;

/** Largest message the local NATS nodes take: a batch body of up to 8 MiB, compressed. */
export const LOCAL_MAX_PAYLOAD = 8 * 1024 * 1024;

/** How long a server may take to start on a busy machine. */
const START_DEADLINE_MS = 60_000;

/** One running (or stopped) server of the cluster. */
interface ServerProcess {
  readonly name: string;
  child?: Deno.ChildProcess;
  log: string[];
}

/** A JetStream node: its name (`n1`…) and, while it runs, its client and route URLs. */
export interface NatsNode {
  readonly name: string;
  clientUrl?: string;
  routeUrl?: string;
}

/** Options of {@linkcode startLocalCluster}. */
export interface LocalClusterOptions {
  /** Directory for the servers' data and logs; default a new temporary one, removed on close. */
  dir?: string;
  /** JetStream nodes; default 3. */
  natsNodes?: number;
}

/** A running local cluster; see the module documentation. */
export interface LocalCluster extends AsyncDisposable {
  readonly dir: string;
  /** The JetStream nodes, `n1`… */
  readonly nodes: readonly NatsNode[];
  /** Client URLs of the JetStream nodes that run now. */
  readonly natsUrls: string[];
  /** ClickHouse's HTTP interface, `http://127.0.0.1:PORT`. */
  readonly clickhouseUrl: string;
  /** PIDs of the servers that run now, by name (`seed`, `n1`…, `clickhouse`), for CPU figures. */
  pids(): Record<string, number>;
  /** Kills a JetStream node (SIGKILL) and waits for it to exit. */
  killNats(name: string): Promise<void>;
  /** Starts a killed JetStream node again on its data; it picks new ports. */
  startNats(name: string): Promise<void>;
  /** Kills the ClickHouse server (SIGKILL). */
  killClickHouse(): Promise<void>;
  /** Stops every server, removes the directory when this module made it; safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts the servers and waits until JetStream has a metadata leader and ClickHouse answers.
 *
 * @throws {Error} naming the server that is missing or did not start, with its last log lines
 */
export async function startLocalCluster(options: LocalClusterOptions = {}): Promise<LocalCluster> {
  const binaries = new Map<string, string>();
  for (const server of CLUSTER_SERVERS) {
    const found = await onPath(server);
    if (found !== undefined) binaries.set(server, found);
    else {
      throw new Error(
        `Cannot start a local cluster: ${server} is not installed (run make cluster-deps, or apt-get install ${server})`,
      );
    }
  }
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "flowexporter-cluster-" });
  const processes: ServerProcess[] = [];
  const nodes: NatsNode[] = [];
  let seedRoute = "";
  let clickhouseUrl = "";
  let closed: Promise<void> | undefined;

  const startNats = async (node: NatsNode) => {
    const nodeDir = `${dir}/${node.name}`;
    await Deno.mkdir(nodeDir, { recursive: true });
    const routes = [seedRoute, ...nodes.flatMap((n) => n.routeUrl ? [n.routeUrl] : [])];
    await Deno.writeTextFile(
      `${nodeDir}/nats.conf`,
      natsConfig(node.name, nodeDir, routes, node.name !== "seed"),
    );
    for await (const entry of Deno.readDir(nodeDir)) {
      if (entry.name.endsWith(".ports")) await Deno.remove(`${nodeDir}/${entry.name}`);
    }
    const server = spawn(node.name, binaries.get("nats-server")!, ["-c", `${nodeDir}/nats.conf`]);
    processes.push(server);
    const ports = await waitFor(`nats-server ${node.name}`, server, () => readPorts(nodeDir));
    node.clientUrl = ports.nats[0];
    node.routeUrl = ports.cluster[0];
  };

  const cluster: LocalCluster = {
    dir,
    nodes,
    get natsUrls() {
      return nodes.flatMap((n) => n.clientUrl ? [n.clientUrl] : []);
    },
    get clickhouseUrl() {
      return clickhouseUrl;
    },
    pids() {
      return Object.fromEntries(processes.flatMap((p) => p.child ? [[p.name, p.child.pid]] : []));
    },
    async killNats(name) {
      const node = nodes.find((n) => n.name === name);
      const server = processes.find((p) => p.name === name && p.child);
      if (node === undefined || server === undefined) {
        throw new Error(`Cannot kill NATS node ${name}: no such running node`);
      }
      await stop(server, "SIGKILL");
      node.clientUrl = undefined;
      node.routeUrl = undefined;
    },
    async startNats(name) {
      const node = nodes.find((n) => n.name === name);
      if (node === undefined || node.clientUrl !== undefined) {
        throw new Error(`Cannot start NATS node ${name}: no such stopped node`);
      }
      await startNats(node);
    },
    async killClickHouse() {
      const server = processes.find((p) => p.name === "clickhouse" && p.child);
      if (server !== undefined) await stop(server, "SIGKILL");
    },
    close() {
      return closed ??= (async () => {
        await Promise.all(processes.map((p) => stop(p, "SIGTERM")));
        if (ownDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      })();
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
  try {
    const seed: NatsNode = { name: "seed" };
    await startNats(seed);
    seedRoute = seed.routeUrl!;
    for (let i = 1; i <= (options.natsNodes ?? 3); i++) nodes.push({ name: `n${i}` });
    await Promise.all(nodes.map(startNats));
    const clickhouse = spawn("clickhouse", binaries.get("clickhouse-server")!, [
      `--config-file=${await writeClickHouseConfig(`${dir}/clickhouse`)}`,
    ]);
    processes.push(clickhouse);
    clickhouseUrl = await waitFor("clickhouse-server", clickhouse, async () => {
      const port = await listeningPort(clickhouse.child!.pid);
      if (port === undefined) return undefined;
      const url = `http://127.0.0.1:${port}`;
      const ok = await fetch(`${url}/ping`).then((r) => r.text()).catch(() => "");
      return ok.trim() === "Ok." ? url : undefined;
    });
    await waitForJetStream(cluster.natsUrls, processes);
  } catch (error) {
    await cluster.close();
    throw error;
  }
  return cluster;
}

function natsConfig(name: string, dir: string, routes: string[], jetstream: boolean): string {
  return [
    `server_name: ${name}`,
    "listen: 127.0.0.1:-1",
    `ports_file_dir: "${dir}"`,
    `max_payload: ${LOCAL_MAX_PAYLOAD}`,
    ...jetstream ? [`jetstream { store_dir: "${dir}/jetstream" }`] : [],
    "cluster {",
    "  name: flowexporter",
    "  listen: 127.0.0.1:-1",
    // Clients must not learn the seed's address: it has no JetStream to answer them.
    ...jetstream ? [] : ["  no_advertise: true"],
    ...routes.length > 0 ? [`  routes: [${routes.map((r) => `"${r}"`).join(", ")}]`] : [],
    "}",
    "",
  ].join("\n");
}

async function writeClickHouseConfig(dir: string): Promise<string> {
  await Deno.mkdir(`${dir}/data`, { recursive: true });
  await Deno.mkdir(`${dir}/tmp`, { recursive: true });
  await Deno.mkdir(`${dir}/user_files`, { recursive: true });
  // http_port 0: the kernel picks the port; it is read back from the process's socket.
  await Deno.writeTextFile(
    `${dir}/config.xml`,
    `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>0</http_port>
  <path>${dir}/data/</path>
  <tmp_path>${dir}/tmp/</tmp_path>
  <user_files_path>${dir}/user_files/</user_files_path>
  <users_config>${dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
`,
  );
  await Deno.writeTextFile(
    `${dir}/users.xml`,
    `<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
`,
  );
  return `${dir}/config.xml`;
}

function spawn(name: string, command: string, args: string[]): ServerProcess {
  const child = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const server: ServerProcess = { name, child, log: [] };
  for (const stream of [child.stdout, child.stderr]) keepTail(stream, server.log);
  child.status.then(() => {
    if (server.child === child) server.child = undefined;
  });
  return server;
}

/** Keeps the last lines of a server's output, for the error when it does not start. */
async function keepTail(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const parts = (rest + value).split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
      if (lines.length > 40) lines.splice(0, lines.length - 40);
    }
  } catch {
    // the process is gone
  }
}

async function stop(server: ServerProcess, signal: Deno.Signal): Promise<void> {
  const child = server.child;
  if (child === undefined) return;
  try {
    child.kill(signal);
  } catch {
    // already exited
  }
  await child.status;
  server.child = undefined;
}

/** Polls `probe` until it gives a value, the server exits, or the deadline passes. */
async function waitFor<T>(
  what: string,
  server: ServerProcess,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + START_DEADLINE_MS;
  for (let delay = 20;; delay = Math.min(delay * 2, 500)) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    const why = server.child === undefined
      ? "it exited"
      : Date.now() > deadline
      ? `it did not start within ${START_DEADLINE_MS / 1000} s`
      : undefined;
    if (why !== undefined) {
      throw new Error(`Cannot start ${what}: ${why}; its last lines:\n${server.log.join("\n")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

async function readPorts(dir: string): Promise<{ nats: string[]; cluster: string[] } | undefined> {
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.endsWith(".ports")) continue;
    const ports = JSON.parse(await Deno.readTextFile(`${dir}/${entry.name}`));
    if (ports.nats?.length && ports.cluster?.length) return ports;
  }
  return undefined;
}

/** The TCP port process `pid` listens on, from `ss` (iproute2). */
async function listeningPort(pid: number): Promise<number | undefined> {
  const out = await new Deno.Command("ss", { args: ["-ltnpH"], stdout: "piped", stderr: "null" })
    .output();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    if (!line.includes(`pid=${pid},`)) continue;
    const match = /127\.0\.0\.1:(\d+)\s/.exec(line);
    if (match !== null) return Number(match[1]);
  }
  return undefined;
}

async function waitForJetStream(urls: string[], processes: ServerProcess[]): Promise<void> {
  const deadline = Date.now() + START_DEADLINE_MS;
  let last: unknown;
  while (Date.now() < deadline) {
    const nc = await connect({ servers: urls, timeout: 2000 }).catch((e) => (last = e, undefined));
    if (nc !== undefined) {
      try {
        const jsm = await jetstreamManager(nc, { timeout: 2000 });
        const info = await jsm.getAccountInfo();
        if (info !== undefined) return;
      } catch (error) {
        last = error;
      } finally {
        await nc.close();
      }
    }
    if (processes.some((p) => p.child === undefined)) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const logs = processes.map((p) => `${p.name}:\n${p.log.slice(-5).join("\n")}`).join("\n");
  throw new Error(
    `Cannot start a local cluster: JetStream is not ready (${errorText(last)})\n${logs}`,
  );
}

/** Where `command` is: on PATH, or in the sbin folders Debian installs servers to. */
async function onPath(command: string): Promise<string | undefined> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    try {
      if ((await Deno.stat(`${dir}/${command}`)).isFile) return `${dir}/${command}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

if (import.meta.main) {
  const cluster = await startLocalCluster({ dir: Deno.args[0] });
  console.log(`FLOWEXPORTER_NATS_URLS=${cluster.natsUrls.join(",")}`);
  console.log(`FLOWEXPORTER_CLICKHOUSE_URL=${cluster.clickhouseUrl}`);
  console.log(`FLOWEXPORTER_CLUSTER_PID=${Deno.pid}`);
  const stop = Promise.withResolvers<void>();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => stop.resolve());
  }
  await stop.promise;
  await cluster.close();
  Deno.exit(0);
}
