/**
 * `flowexporter run`: capture every closed TCP socket on this host, attribute
 * it at capture time, and write it to stdout (JSON lines) and to the shipper
 * (CBOR batches, durable spool, optional collector).
 *
 * @module
 */
import {
  Agent,
  type AgentStats,
  otherVersionCaptures,
  releaseExecutablePages,
  releaseIdleMemory,
  RetiringCapture,
} from "../ffi/agent.ts";
import type { FdMap } from "../ffi/bpf_map.ts";
import { FlowSource } from "../ffi/flow_source.ts";
import { nativeFrameCompressor } from "../ffi/frame_compressor.ts";
import { nativeRunEncoder } from "../ffi/record_encoder.ts";
import { type HostIdentity, HostIdentityWatcher } from "../identity/host_identity.ts";
import { encodeWorkload, IP_WORKLOAD_MAP, PORT_WORKLOAD_MAP } from "../lib/map_layout.ts";
import { CaptureJournal, JOURNAL_DIR } from "../lib/capture_journal.ts";
import { ClockAnchor } from "../lib/clock.ts";
import { parseBootId } from "../lib/flow_id.ts";
import { Intake } from "../lib/intake.ts";
import { RECORD_SIZE } from "../lib/decode.ts";
import { InterimSnapshots } from "../lib/interim.ts";
import { UnfollowedWatch } from "../lib/unfollowed_watch.ts";
import { Sweeps } from "../lib/sweeps.ts";
import { RecordFanout } from "../lib/fanout.ts";
import { Log } from "../lib/log.ts";
import { type AgentMetrics, agentMetrics, MetricsRegistry } from "../lib/metrics.ts";
import { Shipper } from "../lib/shipper.ts";
import { VERSION } from "../lib/version.ts";
import type { BatchHost } from "../lib/wire.ts";
import { writeAllSync } from "./_io.ts";
import { type Config, CONFIG_SCHEMA, OPTIONS_HELP } from "./config.ts";
import { acquireInstanceLock } from "./instance_lock.ts";
import { Liveness, registerProcessMetrics, startMetricsServer } from "./metrics_server.ts";
import { errorText } from "../lib/error_text.ts";
import { pathUse } from "../lib/options.ts";
import { SenderConfigError } from "../lib/sender.ts";
import { unusablePath, withPath } from "../lib/unusable_path.ts";
import { tcpIteratorBugFixedIn, tcpIteratorBugWarning } from "../lib/tcp_iterator_bug.ts";

/** `flowexporter run --help`. */
export const RUN_HELP = `Usage: flowexporter run [options]

Captures every closed TCP socket (IPv4 and IPv6), attributes its local side to
a workload, writes one JSON object per flow to stdout and ships CBOR batches
through a durable spool (to the collector when one is configured). Needs root
(or CAP_BPF + CAP_PERFMON) and kernel BTF.

Precedence: flags > FLOWEXPORTER_* environment > config file > defaults.

${OPTIONS_HELP}`;

const encoder = new TextEncoder();

const WRITABLE_DIR = "choose a writable directory";
const READABLE_FILE = "choose a readable file";
/** How `run` uses its paths: a path it cannot use stops it with one line naming the option. */
const PATHS = {
  lockFile: pathUse(
    CONFIG_SCHEMA,
    "lock_file",
    "lock file",
    "choose a writable file on a local file system",
  ),
  spoolDir: pathUse(CONFIG_SCHEMA, "spool_dir", "spool directory", WRITABLE_DIR),
  pinDir: pathUse(
    CONFIG_SCHEMA,
    "pin_dir",
    "pin directory",
    "choose a directory on the BPF file system (/sys/fs/bpf)",
  ),
  tokenFile: pathUse(CONFIG_SCHEMA, "token_file", "token file", READABLE_FILE),
  caFile: pathUse(CONFIG_SCHEMA, "ca_file", "CA file", READABLE_FILE),
  clientCert: pathUse(CONFIG_SCHEMA, "client_cert", "client certificate", READABLE_FILE),
  clientKey: pathUse(CONFIG_SCHEMA, "client_key", "client key", READABLE_FILE),
};

/**
 * Reads the shipper's TLS and token files once, so that an unusable one stops the start with
 * the option to fix. A token file that does not exist yet is fine: the sender retries until it
 * appears.
 */
function checkShippingFiles(v: Config): void {
  for (
    const [use, path] of [[PATHS.caFile, v.caFile], [PATHS.clientCert, v.clientCert], [
      PATHS.clientKey,
      v.clientKey,
    ], [PATHS.tokenFile, v.tokenFile]] as const
  ) {
    if (path === undefined) continue;
    withPath(use, path, () => {
      try {
        Deno.readFileSync(path);
      } catch (error) {
        if (!(use === PATHS.tokenFile && error instanceof Deno.errors.NotFound)) throw error;
      }
    });
  }
}

/** Bytes of the host_workload value the BPF side copies into flows without a map entry. */
function hostWorkloadValue(identity: HostIdentity): Uint8Array {
  return identity.workloadId === "" ? new Uint8Array(128) : encodeWorkload(identity.workloadId);
}

/** The EC2 instance ID where the platform exposes it (Nitro: the DMI asset tag). */
function instanceId(): string | undefined {
  try {
    const tag = Deno.readTextFileSync("/sys/devices/virtual/dmi/id/board_asset_tag").trim();
    return /^i-[0-9a-f]+$/.test(tag) ? tag : undefined;
  } catch {
    return undefined;
  }
}

/** Resolves when SIGINT or SIGTERM arrives. */
function terminationSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
}

/** The kernel side, opened: the agent and the maps `run` writes or watches. */
interface Capture extends Disposable {
  agent: Agent;
  hostMap: FdMap;
  ipMap: FdMap;
  portMap: FdMap;
  /** Kernel drops the agents of this capture reported so far (pinned with it). */
  reportedDrops: { read(): bigint; write(drops: bigint): void };
}

/**
 * Retires the capture an agent of another state version left pinned in `dir` (an upgrade): its
 * programs stop, now that this agent's programs run, and what its ring holds (closed during the
 * restart, or while both ran) is shipped now, each socket once. Returns the drops its ring had
 * that no batch reported. A capture that cannot be retired keeps running beside this one, and the
 * next start tries again.
 */
function retireCapture(
  dir: string,
  agent: Agent,
  intake: Intake,
  fanout: RecordFanout,
  log: Log,
): bigint {
  let old: RetiringCapture;
  try {
    old = RetiringCapture.open(dir);
  } catch (error) {
    log.warn(`${errorText(error)}; it goes on capturing beside this agent until the next start`);
    return 0n;
  }
  try {
    // Once the old programs have stopped, nothing the own ring gets from here on is theirs too.
    const overlapEnd = agent.stats().ring.produced;
    const buffer = new Uint8Array(RECORD_SIZE * 1024);
    const records = intake.retire(
      {
        ringId: old.ringId,
        recordSize: RECORD_SIZE,
        commit: (position) => old.commit(position),
        consumed: () => old.consumed(),
        read: () => {
          const { bytes, position } = old.read(buffer);
          return { bytes: buffer.subarray(0, bytes), position };
        },
      },
      overlapEnd,
      (chunk) => fanout.take(chunk),
    );
    const { foreignRecords, unreportedDrops } = old;
    old.remove();
    log.info(
      `retired the capture of another agent version in ${dir}: ${records} flows it held are shipped now${
        foreignRecords ? `; ${foreignRecords} of another record version are lost` : ""
      }${unreportedDrops ? `; it had dropped ${unreportedDrops}, reported in the next batch` : ""}`,
    );
    return unreportedDrops;
  } finally {
    old.close();
  }
}

/** Opens, loads and attaches the BPF side, or takes over the pinned one, and its maps. */
function openCapture(v: Config): Capture {
  const agent = Agent.open({ ...v, cgroupPath: v.cgroupPath ?? "" });
  const maps: FdMap[] = [];
  const open = (name: string) => {
    const map = agent.openMap(name);
    maps.push(map);
    return map;
  };
  try {
    const drops = open("reported_drops");
    const key = new Uint8Array(4);
    return {
      agent,
      hostMap: open("host_workload"),
      ipMap: open(IP_WORKLOAD_MAP),
      portMap: open(PORT_WORKLOAD_MAP),
      reportedDrops: {
        read: () => new DataView(drops.lookup(key)!.buffer).getBigUint64(0, true),
        write: (n) => {
          const value = new Uint8Array(8);
          new DataView(value.buffer).setBigUint64(0, n, true);
          drops.update(key, value);
        },
      },
      [Symbol.dispose]() {
        for (const map of maps.reverse()) map.close();
        agent.close();
      },
    };
  } catch (error) {
    for (const map of maps) map.close();
    agent.close();
    throw error;
  }
}

/** Keeps the BPF side's host identity (flows no identity map claims) in step with the certificate. */
async function wireHostIdentity(v: Config, hostMap: FdMap, log: Log) {
  const hostKey = new Uint8Array(4);
  const watcher = await HostIdentityWatcher.start({
    path: v.certPath,
    rule: v.idRule,
    log: (line) => log.info(line),
    onChange: (identity) => hostMap.update(hostKey, hostWorkloadValue(identity)),
  });
  hostMap.update(hostKey, hostWorkloadValue(watcher.current()));
  return watcher;
}

/** Registers the agent's metrics; the kernel and shipper counters are read at each scrape. */
function wireMetrics(capture: Capture, shipper: Shipper): {
  registry: MetricsRegistry;
  metrics: AgentMetrics;
} {
  const registry = new MetricsRegistry();
  const metrics = agentMetrics(registry);
  registerProcessMetrics(registry);
  registry.onCollect(() => {
    const s = capture.agent.stats();
    metrics.kernelDrops.setTotal(Number(s.kernelDrops));
    metrics.recursionMisses.setTotal(Number(s.recursionMisses));
    metrics.stateTracepointAttached.set(s.stateTracepoint ? 1 : 0);
    metrics.unfollowedAtDestroy.setTotal(Number(s.unfollowedAtDestroy));
    metrics.flowsSwept.setTotal(Number(s.swept));
    metrics.staleStatesSwept.setTotal(Number(s.sweptStale));
    const ship = shipper.stats();
    metrics.batchesSent.setTotal(ship.batchesSent);
    metrics.batchesFailed.setTotal(ship.batchesFailed);
    metrics.batchesRetried.setTotal(ship.batchesRetried);
    metrics.spoolBytes.set(ship.spoolBytes);
    metrics.spoolFiles.set(ship.spoolFiles);
    metrics.spoolOldestBatchAgeSeconds.set(ship.oldestBatchAgeMs / 1000);
    for (const map of [capture.ipMap, capture.portMap]) {
      metrics.identityMapEntries.labels(map.name).set(map.count());
      metrics.identityMapCapacity.labels(map.name).set(map.maxEntries);
    }
  });
  return { registry, metrics };
}

/** The writers (host agents, connect hooks) delete their entries; warns before a map fills up. */
function watchMapFill(maps: FdMap[], log: Log): Disposable {
  const timer = setInterval(() => {
    for (const map of maps) {
      const entries = map.count();
      if (entries >= 0.9 * map.maxEntries) {
        log.warn(
          `Identity map ${map.name} is ${entries}/${map.maxEntries} full (its writers must delete stale entries)`,
        );
      }
    }
  }, 60_000);
  return { [Symbol.dispose]: () => clearInterval(timer) };
}

/** Whether the sockets open at start were seeded, for the start line. */
function seedingText(stats: AgentStats, noSeed: boolean): string {
  if (stats.seeded >= 0) return `${stats.seeded} open sockets seeded`;
  // Its programs followed every socket opened since its first agent seeded.
  if (stats.resumed) return "not seeded again";
  return noSeed ? "not seeded (no_seed)" : "no socket iterator";
}

/** Which sockets sock_ops follows, for the start line. */
function followedText(stats: AgentStats): string {
  if (stats.attach !== "sock_ops") return "";
  if (!stats.stateTracepoint) return ", all followed by sock_ops";
  if (stats.unfollowed <= 0) return "";
  return `, ${stats.unfollowed} open sockets of other network namespaces not followed by sock_ops yet`;
}

/** Bytes of interim records read per call of a pass: about a thousand records. */
const INTERIM_BUFFER_BYTES = 256 * 1024;

/**
 * Starts the interim pass at each window end, unless `interim_interval` is 0; the pass's
 * records go to `take`.
 */
function startInterimPasses(
  v: Config,
  agent: Agent,
  take: (bytes: Uint8Array) => void,
  metrics: AgentMetrics,
  log: Log,
): InterimSnapshots | undefined {
  const minAgeMs = v.interimInterval ?? v.batchInterval;
  if (minAgeMs === 0) return undefined;
  let buffer: Uint8Array | undefined;
  // Logged once per incident (a kernel without the TCP iterator fails every window alike).
  let failing = "";
  return new InterimSnapshots({
    windowMs: v.batchInterval,
    minAgeMs,
    snapshot: (minAgeNs, onRecords) =>
      agent.snapshot(minAgeNs, buffer ??= new Uint8Array(INTERIM_BUFFER_BYTES), onRecords),
    onRecords: take,
    onPass: (_records, elapsedMs) => {
      metrics.interimPassSeconds.set(elapsedMs / 1000);
      if (failing !== "") log.info("Interim records are taken again");
      failing = "";
    },
    onError: (error) => {
      if (error.message === failing) return;
      failing = error.message;
      log.warn(
        `${error.message} (no interim records until a pass succeeds; each window tries again; interim_interval 0 turns them off)`,
      );
    },
  });
}

/** Runs the capture until SIGINT/SIGTERM; returns the exit code. */
export async function run(v: Config): Promise<number> {
  const log = new Log({
    format: v.logFormat,
    level: v.logLevel,
    write: (line) => writeAllSync(Deno.stderr, encoder.encode(line + "\n")),
  });
  // First of all: a SIGTERM during the start (a supervisor, a quick restart) must stop the agent
  // cleanly once it runs, not kill it by the signal's default action before its listener exists.
  const signalled = terminationSignal();
  // Before the agent opens anything: a second agent must not touch the pinned maps.
  using _lock = withPath(PATHS.lockFile, v.lockFile, () => acquireInstanceLock(v.lockFile));
  // The paths before the capture, so that a bad one stops the start before anything is loaded.
  using journal = withPath(
    PATHS.spoolDir,
    v.spoolDir,
    () => CaptureJournal.open(`${v.spoolDir}/${JOURNAL_DIR}`),
  );
  checkShippingFiles(v);
  // bpffs mounted first: on a host that has not mounted it, /sys/fs/bpf is a plain sysfs folder.
  Agent.prepareHost();
  withPath(
    PATHS.pinDir,
    v.pinDir,
    () => Deno.mkdirSync(v.pinDir, { recursive: true, mode: 0o700 }),
  );
  using capture = openCapture(v);
  const { agent } = capture;
  const bootId = parseBootId(Deno.readTextFileSync("/proc/sys/kernel/random/boot_id"));
  using watcher = await wireHostIdentity(v, capture.hostMap, log);

  const clock = new ClockAnchor(() => agent.clockReading());
  const host: BatchHost = {
    hostname: Deno.hostname(),
    workloadId: "",
    instanceId: instanceId(),
  };
  // Kernel drops of this capture that batches reported: the next batch reports what came after.
  let reportedDrops = capture.reportedDrops.read();
  const shipper = new Shipper({
    spoolDir: v.spoolDir,
    collectorUrl: v.collectorUrl,
    exporterVersion: VERSION,
    userAgent: `flowexporter/${VERSION}`,
    compressFrame: nativeFrameCompressor(),
    host: () => ({ ...host, workloadId: watcher.current().workloadId }),
    clockOffsetNs: () => clock.offsetNs(),
    lossCounters: () => {
      const s = agent.stats();
      return { kernelDrops: s.kernelDrops, recursionMisses: s.recursionMisses };
    },
    intervalMs: v.batchInterval,
    maxRecords: v.batchMaxRecords,
    maxBytes: v.batchMaxBytes,
    spoolMaxBytes: v.spoolMaxBytes,
    compression: v.compression,
    gzipLevel: v.gzipLevel,
    tokenFile: v.tokenFile,
    caFile: v.caFile,
    certFile: v.clientCert,
    keyFile: v.clientKey,
    logger: log.logger,
    lossReported: { kernelDrops: reportedDrops, recursionMisses: 0n },
    // What sealing and shipping the window freed goes back to the system, and the compressor's
    // tables with it, or a quiet agent keeps them (about 2.5 MiB).
    onQuiet: () => releaseIdleMemory(),
    onSpooled: (window, reported) => {
      reportedDrops = reported.kernelDrops;
      try {
        capture.reportedDrops.write(reported.kernelDrops);
        journal.sealed(window);
      } catch (error) {
        log.warn(
          `Cannot record that a batch is spooled (reported drops, capture journal): ${
            errorText(error)
          } (a restart may resend its flows)`,
        );
      }
    },
  });
  try {
    await shipper.start();
  } catch (error) {
    // The TLS files were read above; anything else on disk that fails here is the spool's.
    throw error instanceof SenderConfigError
      ? error
      : unusablePath(PATHS.spoolDir, v.spoolDir, error);
  }
  const intake = new Intake({
    bootId,
    clockOffsetNs: () => clock.offsetNs(),
    journal,
    shipper,
    encodeRun: nativeRunEncoder(),
    ring: {
      ringId: agent.stats().ring.id,
      recordSize: agent.recordSize,
      commit: (position) => agent.commit(position),
      consumed: () => agent.stats().ring.consumed,
    },
  });
  const replayed = intake.replay();
  if (replayed.records > 0 || replayed.unreadable > 0 || journal.torn > 0) {
    log.info(
      `Capture journal: ${replayed.records} flows an earlier run captured are shipped now${
        replayed.unreadable
          ? `; ${replayed.unreadable} journaled in a form this version cannot read (another version's, or damaged) are lost`
          : ""
      }`,
    );
  }

  const { registry, metrics } = wireMetrics(capture, shipper);
  const liveness = new Liveness({ pollMs: v.pollMs });
  await using _server = v.metricsListen
    ? startMetricsServer({
      ...v.metricsListen,
      registry,
      health: () => liveness.status(),
      onError: (message) => log.error(message),
    })
    : undefined;
  using _fill = watchMapFill([capture.ipMap, capture.portMap], log);

  let failure: Error | undefined;
  const stats = agent.stats();
  if (stats.attach !== "sock_ops") {
    log.warn(
      "sock_ops is not attached (no cgroup v2, no CAP_NET_ADMIN, or an empty cgroup_path): tracepoints alone capture, and a close the kernel skips on a busy CPU is recovered at destroy or counted as a recursion miss",
    );
  }
  const fixedIn = stats.seeded >= 0 ? tcpIteratorBugFixedIn(Deno.osRelease()) : undefined;
  if (fixedIn) log.warn(tcpIteratorBugWarning(Deno.osRelease(), fixedIn));
  log.info(
    `capturing TCP flows (${stats.attach}, ${stats.transport}, ${seedingText(stats, v.noSeed)}${
      followedText(stats)
    }${stats.resumed ? ", resumed the pinned capture" : ""})`,
  );
  await using _unfollowed = new UnfollowedWatch({
    agent,
    onDetached: () =>
      log.info("sock_ops follows every open socket now: the state tracepoint is detached"),
    // The tracepoint stays, so no close is missed; only its cost remains.
    onError: (error) => log.warn(`${error.message} (the state tracepoint stays attached)`),
  });
  let stopForOutput = () => {};
  const stopped = Promise.race([
    signalled,
    new Promise<void>((resolve) => stopForOutput = resolve),
  ]);
  const fanout = new RecordFanout({
    // With a collector, records already leave the host: JSON lines would only fill the journal.
    writeStdout: v.output === "json" || (v.output === "auto" && v.collectorUrl === undefined)
      ? (bytes) => writeAllSync(Deno.stdout, bytes)
      : undefined,
    metrics,
    onStdoutFailed: (error) => {
      // Its reader went away (`| head`, a restarted log pipe): stop as on SIGTERM, so the
      // open window still reaches the spool, and exit 1 so a supervisor restarts us.
      failure = new Error(
        `Cannot write flow records to stdout: ${
          errorText(error)
        }; stopping (every record captured is in the spool)`,
      );
      log.error(failure.message);
      stopForOutput();
    },
  });
  for (const dir of otherVersionCaptures(v.pinDir)) {
    shipper.addUnreportedKernelDrops(retireCapture(dir, agent, intake, fanout, log));
  }
  {
    await using _source = new FlowSource(agent, {
      timeoutMs: v.pollMs,
      onPoll: () => liveness.polled(),
      onRecords: (bytes, position) => fanout.take(intake.receive(bytes, position)),
      onError: (err) => {
        failure = err;
        liveness.failed(err.message);
        log.error(err.message);
      },
    });
    await using _interim = startInterimPasses(
      v,
      agent,
      (bytes) => {
        fanout.takeInterim(intake.receiveInterim(bytes));
      },
      metrics,
      log,
    );
    // Declared after the source, so disposed before it: the last pass's records are drained.
    let sweepFailing = false;
    await using _sweeps = new Sweeps({
      sweep: async () => {
        const records = await agent.sweep();
        if (sweepFailing) log.info("The flow states are swept again");
        sweepFailing = false;
        return records;
      },
      onSwept: (records) =>
        log.warn(
          `recorded ${records} closed sockets whose close and destroy the kernel ran no program for (close_seen_by sweep)`,
        ),
      onError: (error) => {
        if (!sweepFailing) log.warn(`${error.message} (the next sweep tries again)`);
        sweepFailing = true;
      },
    });
    // Started: what only starting read of the executable goes back to the system (about 28 MiB).
    try {
      const advised = releaseExecutablePages();
      log.debug(
        `Paged out the executable's ${(advised / 2 ** 20).toFixed(0)} MiB read-only mappings`,
      );
    } catch (error) {
      log.debug(`${errorText(error)} (its pages stay until the kernel needs them)`);
    }
    await stopped;
  }
  const shipped = await shipper.close(v.shutdownDeadline);
  const end = agent.stats();
  // Drops after the last batch was sealed are the next start's to report, from the pinned count.
  const unreported = end.kernelDrops - reportedDrops;
  log.info(
    `stopped (records ${metrics.flowsCaptured.get()}, kernel drops ${reportedDrops}${
      unreported > 0n
        ? ` (and ${unreported} since the last batch, for the next start to report)`
        : ""
    }, ` +
      `recursion misses ${end.recursionMisses}, recovered at destroy or by the sweep ${metrics.flowsRecovered.get()} ` +
      `(${end.unfollowedAtDestroy} of them nobody followed, ${end.swept} swept), ` +
      `batches sent ${shipped.batchesSent}, spooled unsent ${shipped.spoolFiles}, ` +
      // Records that came after the last drain: the pinned ring keeps them for the next start.
      `left in the ring ${end.ring.waiting})`,
  );
  if (end.transport === "ringbuf") {
    log.info(
      `The BPF side keeps capturing into its ring buffer for the next start (flowexporter detach --pin-dir ${v.pinDir} ends it)`,
    );
  }
  return failure ? 1 : 0;
}
