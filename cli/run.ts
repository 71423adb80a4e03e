/**
 * `flowexporter run`: capture every closed TCP socket on this host, attribute
 * it at capture time, and write it to stdout (JSON lines) and to the shipper
 * (CBOR batches, durable spool, optional collector).
 *
 * @module
 */
import { Agent } from "../ffi/agent.ts";
import type { FdMap } from "../ffi/bpf_map.ts";
import { FlowSource } from "../ffi/flow_source.ts";
import {
  type HostIdentity as HostCertIdentity,
  HostIdentityWatcher,
} from "../identity/host_identity.ts";
import { encodeWorkload, IP_WORKLOAD_MAP, PORT_WORKLOAD_MAP } from "../identity/map_layout.ts";
import { ClockAnchor } from "../lib/clock.ts";
import { decodeFlows } from "../lib/decode.ts";
import type { FlowRecord, IdentitySource } from "../lib/flow.ts";
import { formatFlowJson } from "../lib/json_lines.ts";
import { Log } from "../lib/log.ts";
import { agentMetrics, MetricsRegistry } from "../lib/metrics.ts";
import { Shipper } from "../lib/shipper.ts";
import { VERSION } from "../lib/version.ts";
import type { HostIdentity } from "../lib/wire.ts";
import { writeAllSync } from "./_io.ts";
import { type Config, OPTIONS_HELP } from "./config.ts";
import { acquireInstanceLock } from "./instance_lock.ts";
import { Liveness, registerProcessMetrics, startMetricsServer } from "./metrics_server.ts";
import { errorText } from "../lib/_error_text.ts";

/** `flowexporter run --help`. */
export const RUN_HELP = `Usage: flowexporter run [options]

Captures every closed TCP socket (IPv4 and IPv6), attributes its local side to
a workload, writes one JSON object per flow to stdout and ships CBOR batches
through a durable spool (to the collector when one is configured). Needs root
(or CAP_BPF + CAP_PERFMON) and kernel BTF.

Precedence: flags > FLOWEXPORTER_* environment > config file > defaults.

${OPTIONS_HELP}`;

const encoder = new TextEncoder();

/** Bytes of the host_workload value the BPF side copies into flows without a map entry. */
function hostWorkloadValue(identity: HostCertIdentity): Uint8Array {
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

/** Reused for every slice of JSON lines (an agent's output is its hottest allocation). */
let jsonBytes = new Uint8Array(256 * 1024);

/** Writes JSON lines to stdout in slices: one multi-megabyte string costs more than many small. */
function writeJsonLines(records: FlowRecord[]): void {
  for (let i = 0; i < records.length; i += 256) {
    let text = "";
    for (const r of records.slice(i, i + 256)) text += formatFlowJson(r) + "\n";
    // UTF-8 takes at most 3 bytes per UTF-16 unit.
    if (text.length * 3 > jsonBytes.length) jsonBytes = new Uint8Array(text.length * 3);
    const { written } = encoder.encodeInto(text, jsonBytes);
    writeAllSync(Deno.stdout, jsonBytes.subarray(0, written));
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

/** Runs the capture until SIGINT/SIGTERM; returns the exit code. */
export async function run(v: Config): Promise<number> {
  const log = new Log({
    format: v.logFormat,
    level: v.logLevel,
    write: (line) => writeAllSync(Deno.stderr, encoder.encode(line + "\n")),
  });
  // Before the agent opens anything: a second agent must not touch the pinned maps.
  using _lock = acquireInstanceLock(v.lockFile);
  using agent = Agent.open(v);
  using hostMap = agent.openMap("host_workload");
  using ipMap = agent.openMap(IP_WORKLOAD_MAP);
  using portMap = agent.openMap(PORT_WORKLOAD_MAP);
  const hostKey = new Uint8Array(4);
  using watcher = await HostIdentityWatcher.start({
    path: v.certPath,
    rule: v.idRule,
    log: (line) => log.info(line),
    onChange: (identity) => hostMap.update(hostKey, hostWorkloadValue(identity)),
  });
  hostMap.update(hostKey, hostWorkloadValue(watcher.current()));

  const clock = new ClockAnchor(() => agent.clockReading());
  const host: HostIdentity = {
    hostname: Deno.hostname(),
    workloadId: "",
    instanceId: instanceId(),
  };
  const shipper = new Shipper({
    spoolDir: v.spoolDir,
    collectorUrl: v.collectorUrl,
    exporterVersion: VERSION,
    userAgent: `flowexporter/${VERSION}`,
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
    gzipLevel: v.gzipLevel,
    tokenFile: v.tokenFile,
    caFile: v.caFile,
    certFile: v.clientCert,
    keyFile: v.clientKey,
    logger: log.logger,
  });
  await shipper.start();

  const registry = new MetricsRegistry();
  const metrics = agentMetrics(registry);
  registerProcessMetrics(registry);
  const mapFill = (map: FdMap) => {
    metrics.identityMapEntries.labels(map.name).set(map.count());
    metrics.identityMapCapacity.labels(map.name).set(map.maxEntries);
  };
  registry.onCollect(() => {
    const s = agent.stats();
    metrics.kernelDrops.setTotal(Number(s.kernelDrops));
    metrics.recursionMisses.setTotal(Number(s.recursionMisses));
    const ship = shipper.stats();
    metrics.batchesSent.setTotal(ship.batchesSent);
    metrics.batchesFailed.setTotal(ship.batchesFailed);
    metrics.batchesRetried.setTotal(ship.batchesRetried);
    metrics.spoolBytes.set(ship.spoolBytes);
    metrics.spoolFiles.set(ship.spoolFiles);
    metrics.spoolOldestBatchAgeSeconds.set(ship.oldestBatchAgeMs / 1000);
    mapFill(ipMap);
    mapFill(portMap);
  });
  const liveness = new Liveness({ pollMs: v.pollMs });
  await using _server = v.metricsListen
    ? startMetricsServer({
      ...v.metricsListen,
      registry,
      health: () => liveness.status(),
      onError: (message) => log.error(message),
    })
    : undefined;
  // The writers (host agents, connect hooks) delete their entries; warn before a map fills up.
  const fillCheck = setInterval(() => {
    for (const map of [ipMap, portMap]) {
      const entries = map.count();
      if (entries >= 0.9 * map.maxEntries) {
        log.warn(
          `Identity map ${map.name} is ${entries}/${map.maxEntries} full (its writers must delete stale entries)`,
        );
      }
    }
  }, 60_000);

  let failure: Error | undefined;
  const stats = agent.stats();
  log.info(
    `capturing TCP flows (${stats.attach}, ${stats.transport}, ${
      stats.seeded < 0 ? "no socket iterator" : `${stats.seeded} open sockets seeded`
    })`,
  );
  let stopForOutput = () => {};
  const stopped = Promise.race([
    terminationSignal(),
    new Promise<void>((resolve) => stopForOutput = resolve),
  ]);
  // With a collector, records already leave the host: JSON lines would only fill the journal.
  let jsonOutput = v.output === "json" || (v.output === "auto" && v.collectorUrl === undefined);
  {
    await using _source = new FlowSource(agent, {
      timeoutMs: v.pollMs,
      onPoll: () => liveness.polled(),
      onRecords: (bytes) => {
        const records = decodeFlows(bytes, clock.offsetNs());
        if (jsonOutput) {
          try {
            writeJsonLines(records);
          } catch (error) {
            // Its reader went away (`| head`, a restarted log pipe): stop as on SIGTERM, so the
            // open window still reaches the spool, and exit 1 so a supervisor restarts us.
            jsonOutput = false;
            failure = new Error(
              `Cannot write flow records to stdout: ${
                errorText(error)
              }; stopping (every record captured is in the spool)`,
            );
            log.error(failure.message);
            stopForOutput();
          }
        }
        // One pass: ship each record and count, per batch, what the metrics report.
        const sources = { "port-map": 0, "ip-map": 0, host: 0, unknown: 0 };
        let recovered = 0; // made at destroy: the kernel skipped the close run
        let oldestEnd = records[0].tEndNs;
        for (const r of records) {
          shipper.add(r);
          sources[r.identitySource]++;
          if (r.closeState === "UNKNOWN") recovered++;
          if (r.tEndNs < oldestEnd) oldestEnd = r.tEndNs;
        }
        metrics.flowsCaptured.add(records.length);
        for (const source of Object.keys(sources) as IdentitySource[]) {
          if (sources[source]) metrics.bySource[source].add(sources[source]);
        }
        metrics.flowsRecovered.add(recovered);
        metrics.workerLag.observe(Number(BigInt(Date.now()) * 1_000_000n - oldestEnd) / 1e9);
      },
      onError: (err) => {
        failure = err;
        liveness.failed(err.message);
        log.error(err.message);
      },
    });
    await stopped;
  }
  clearInterval(fillCheck);
  const end = agent.stats();
  const shipped = await shipper.close(v.shutdownDeadline);
  log.info(
    `stopped (records ${metrics.flowsCaptured.get()}, kernel drops ${end.kernelDrops}, ` +
      `recursion misses ${end.recursionMisses}, recovered at destroy ${metrics.flowsRecovered.get()}, ` +
      `batches sent ${shipped.batchesSent}, spooled unsent ${shipped.spoolFiles})`,
  );
  return failure ? 1 : 0;
}
