/**
 * `flowexporter doctor`: checks whether this host can run the agent with the given
 * configuration, one line per check (`pass`, `warn`, `fail` or `skip`), each problem with what
 * to do about it. It reads the same options as `run`, so `flowexporter doctor --perf-buffer`
 * checks the set-up `flowexporter run --perf-buffer` would use.
 *
 * Exit status: 0 when no check failed (warnings allowed), 1 when one did, 2 for invalid
 * options.
 *
 * @example
 * ```ts
 * import { runDoctor } from "./doctor.ts";
 * Deno.exit(await runDoctor(Deno.args.slice(1)));
 * ```
 *
 * @module
 */

import { dirname } from "node:path";
import { otherVersionCaptures, pinnedCaptures } from "../ffi/agent.ts";
import {
  BPF_STATS_SYSCTL,
  BPFFS_PATH,
  bpfStatsEnabled,
  BTF_PATH,
  cgroup2Root,
  effectiveCapabilities,
  hasBpfPrivileges,
  hasNetAdmin,
  mounts,
  TRACEFS_PATH,
} from "../ffi/kernel_prereqs.ts";
import { nativePath, openNative, Probe } from "../ffi/symbols.ts";
import {
  CertificateError,
  type CertificateIdentity,
  type IdRule,
  readCertificateIdentity,
} from "../identity/host_identity.ts";
import { showDuration } from "../lib/option_kinds.ts";
import { tcpIteratorBugFixedIn, tcpIteratorBugWarning } from "../lib/tcp_iterator_bug.ts";
import { Sender } from "../lib/sender.ts";
import type { HttpTransport } from "../lib/http_client.ts";
import { type Config, type EffectiveConfig, loadConfig, OPTIONS_HELP } from "./config.ts";
import { ConfigError, type ReadTextFile } from "../lib/options.ts";
import { inspectInstanceLock, type LockState } from "./instance_lock.ts";
import { errorText } from "../lib/error_text.ts";

/** The outcome of one check. */
export type CheckStatus = "pass" | "warn" | "fail" | "skip";

/** One line of the report. */
export interface CheckResult {
  /** Short name, e.g. `kernel`, `btf`, `collector`. */
  name: string;
  status: CheckStatus;
  /** What was found and, unless it passed, what to do. */
  detail: string;
}

/** What a writable-directory probe found. */
export type DirState =
  | { state: "writable" }
  | { state: "creatable"; parent: string }
  | { state: "unusable"; problem: string };

/** Everything the doctor reads from the host; tests replace any of it. */
export interface DoctorProbes {
  /** The environment (for `FLOWEXPORTER_*` options). */
  env: Record<string, string>;
  /** Reads the config file. */
  readConfigFile: ReadTextFile;
  /** Kernel release, `Deno.osRelease()`. */
  osRelease(): string;
  /** The raw kernel BTF (/sys/kernel/btf/vmlinux); throws when missing or unreadable. */
  readBtf(): Uint8Array;
  /**
   * What the kernel offers the agent: the shim's `fe_probe()` bits (ffi/symbols.ts `Probe`),
   * the answer `fe_open()` acts on. Throws NativeLoadError when the library cannot be loaded.
   */
  probe(): number;
  /** True when the path exists. */
  exists(path: string): boolean;
  /** Mount target → file system type (ffi/kernel_prereqs.ts `mounts`). */
  mounts(): Map<string, string>;
  /** The effective capability set. */
  capabilities(): bigint;
  /** Soft RLIMIT_MEMLOCK in bytes, or "unlimited". */
  memlockLimit(): number | "unlimited";
  /** Whether the kernel times every BPF program run (ffi/kernel_prereqs.ts). */
  bpfStatsEnabled(): boolean;
  /** Loads libflowexporter.so and returns its path; throws NativeLoadError. */
  loadLibrary(): string;
  /** Whether an agent holds the instance lock. */
  instanceLock(path: string): LockState;
  /** Pinned captures under the pin directory (ffi/agent.ts `pinnedCaptures`). */
  pinnedCaptures(pinDir: string): string[];
  /**
   * Those of another state version than this agent's (ffi/agent.ts `otherVersionCaptures`);
   * throws when the library cannot be loaded.
   */
  otherVersionCaptures(pinDir: string): string[];
  /** Reads the identity certificate (identity/host_identity.ts). */
  readCertificate(path: string, rule: IdRule, now: Date): Promise<CertificateIdentity>;
  /**
   * The collector check's HTTP client (default: the agent's own, with the configured TLS
   * files).
   */
  collectorTransport?: HttpTransport;
  /** Whether the agent could write to (or create) a directory. */
  dirState(path: string): Promise<DirState>;
  now(): Date;
  /** Receives each report line. */
  print(line: string): void;
}

/** How long the collector has to answer the doctor's request. */
export const COLLECTOR_TIMEOUT_MS = 5_000;
/** A certificate expiring sooner than this is a warning. */
const EXPIRY_WARNING_DAYS = 7;
const DAY_MS = 86_400_000;

/** The `--help` text. */
export const DOCTOR_HELP = `Usage: flowexporter doctor [options]

Checks this host for what the agent needs: kernel version and BTF, ring buffer, tracepoint,
mounts, privileges, memlock, BPF run-time stats, the native library, the instance lock, the
identity certificate, the collector and the spool directory. Takes the same options as "run"
and checks the set-up they describe. Exit status: 0 ready (warnings allowed), 1 a check
failed, 2 invalid options.

${OPTIONS_HELP}`;

/** The real host. */
export function hostProbes(): DoctorProbes {
  return {
    env: Deno.env.toObject(),
    readConfigFile: Deno.readTextFileSync,
    osRelease: Deno.osRelease,
    readBtf: () => Deno.readFileSync(BTF_PATH),
    probe: () => openNative().fe_probe(),
    exists: (path) => {
      try {
        Deno.statSync(path);
        return true;
      } catch {
        return false;
      }
    },
    mounts,
    capabilities: effectiveCapabilities,
    memlockLimit: () => {
      const limits = Deno.readTextFileSync("/proc/self/limits");
      const soft = /^Max locked memory\s+(\S+)/m.exec(limits)?.[1] ?? "unlimited";
      return soft === "unlimited" ? soft : Number(soft);
    },
    bpfStatsEnabled,
    loadLibrary: () => {
      openNative();
      return nativePath() ?? "";
    },
    instanceLock: inspectInstanceLock,
    pinnedCaptures,
    otherVersionCaptures,
    readCertificate: (path, rule, now) => readCertificateIdentity(path, { rule, now }),
    dirState,
    now: () => new Date(),
    print: (line) => console.log(line),
  };
}

/**
 * Runs every check and prints the report.
 *
 * @param args the arguments after `doctor` (the `run` options)
 * @param probes replacements for the host probes (tests)
 * @returns 0 when no check failed, 1 when one did, 2 for invalid options
 */
export async function runDoctor(
  args: string[],
  probes: Partial<DoctorProbes> = {},
): Promise<number> {
  const p: DoctorProbes = { ...hostProbes(), ...probes };
  let config: EffectiveConfig;
  try {
    config = loadConfig(args, p.env, p.readConfigFile);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    p.print(`flowexporter: ${error.message}`);
    return 2;
  }
  if (config.help) {
    p.print(DOCTOR_HELP);
    return 0;
  }
  const counts: Record<CheckStatus, number> = { pass: 0, warn: 0, fail: 0, skip: 0 };
  const report = (r: CheckResult) => {
    counts[r.status]++;
    p.print(`${r.status.padEnd(5)} ${r.name.padEnd(12)} ${r.detail}`);
  };
  for (const check of checks(config, p)) report(await check());
  const verdict = counts.fail === 0 ? "ready" : "not ready";
  const n = (count: number, word: string) => `${count} ${word}${count === 1 ? "" : "s"}`;
  p.print(
    `flowexporter doctor: ${verdict} (${counts.pass} passed, ${
      n(counts.warn, "warning")
    }, ${counts.fail} failed, ${counts.skip} skipped)`,
  );
  return counts.fail === 0 ? 0 : 1;
}

type Check = () => CheckResult | Promise<CheckResult>;

/** Whether the kernel offers a feature, or why the doctor cannot tell. */
type Offer = boolean | { unknown: string };

/**
 * Asks the shim what the kernel offers, as the agent does at start, so that the two cannot
 * disagree. Map and program type probes create maps and load programs: without the privileges
 * for that they answer "no", so the doctor says it cannot tell instead.
 */
function kernelOffers(p: DoctorProbes): (bit: number) => Offer {
  let bits: number;
  try {
    bits = p.probe();
  } catch {
    const unknown = "the native library could not be loaded to probe the kernel (see library)";
    return () => ({ unknown });
  }
  if ((bits & Probe.btf) === 0) return () => ({ unknown: "no kernel BTF" });
  const byLoading = Probe.ringbuf | Probe.sockops | Probe.sockopsFollow;
  const privileged = hasBpfPrivileges(p.capabilities());
  return (bit) =>
    (bit & byLoading) !== 0 && !privileged
      ? { unknown: "probing needs the privileges to load BPF (run doctor as root)" }
      : (bits & bit) !== 0;
}

/** `cannot tell (why)` for an unknown offer. */
function cannotTell(offer: { unknown: string }): string {
  return `cannot tell (${offer.unknown})`;
}

/** The warning for what the kernel lacks (`missing`) or what cannot be told, and what follows. */
function lacking(
  name: string,
  offer: Exclude<Offer, true>,
  missing: string,
  consequence: string,
): CheckResult {
  return {
    name,
    status: "warn",
    detail: `${offer === false ? missing : cannotTell(offer)}: ${consequence}`,
  };
}

/** The checks in report order; later ones reuse what earlier ones read. */
function checks(config: EffectiveConfig, p: DoctorProbes): Check[] {
  const v = config.values;
  const kernel = kernelVersion(p.osRelease());
  let btf: Uint8Array | undefined;
  let btfProblem = "";
  try {
    btf = p.readBtf();
  } catch (error) {
    btfProblem = errorText(error);
  }
  const offers = kernelOffers(p);

  return [
    () => ({
      name: "config",
      status: "pass",
      detail: config.file
        ? `valid (file ${config.file})`
        : "valid (no config file; flags, environment and defaults)",
    }),
    () => checkKernel(p.osRelease(), kernel),
    () =>
      btf
        ? { name: "btf", status: "pass", detail: `kernel BTF at ${BTF_PATH} (${mib(btf.length)})` }
        : {
          name: "btf",
          status: "fail",
          detail:
            `Cannot read kernel BTF at ${BTF_PATH}: ${btfProblem} (the agent needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, standard on current distributions)`,
        },
    () => checkRingBuffer(v, offers(Probe.ringbuf)),
    () => checkClock(offers(Probe.bootNs)),
    () => checkTracepoint(offers(Probe.tpBtf)),
    () => checkSockops(v, p, offers(Probe.sockops)),
    () => checkSeeding(v, offers(Probe.iterTcp), offers(Probe.sockopsFollow), p.osRelease()),
    () => checkInterim(v, offers(Probe.mapWalk)),
    () => checkSweep(v, offers(Probe.mapWalk), offers(Probe.ringbuf)),
    () => checkMount(p, "tracefs", TRACEFS_PATH, "the classic destroy tracepoint needs it"),
    () => checkMount(p, "bpf", BPFFS_PATH, `the identity maps are pinned under ${v.pinDir}`),
    () => checkPrivileges(p),
    () => checkMemlock(p, kernel),
    () => checkBpfStats(p),
    () => checkLibrary(p),
    () => checkLock(p, v.lockFile, v.pinDir),
    () => checkCertificate(p, config),
    () => checkCollector(p, v),
    () => checkSpool(p, v.spoolDir),
  ];
}

type Version = [number, number] | undefined;

function kernelVersion(release: string): Version {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

function atLeast(v: Version, major: number, minor: number): boolean | undefined {
  if (!v) return undefined;
  return v[0] > major || (v[0] === major && v[1] >= minor);
}

function checkKernel(release: string, v: Version): CheckResult {
  const name = "kernel";
  if (!v) {
    return {
      name,
      status: "warn",
      detail: `Linux ${release}: cannot read the version (the checks below decide)`,
    };
  }
  if (atLeast(v, 5, 8)) {
    return {
      name,
      status: "pass",
      detail: `Linux ${release}: ring buffer, bpf_ktime_get_boot_ns and tp_btf (5.8+)`,
    };
  }
  const missing = atLeast(v, 5, 5)
    ? "no ring buffer or bpf_ktime_get_boot_ns before 5.8: the agent uses the perf buffer and CLOCK_MONOTONIC"
    : "no tp_btf before 5.5, no ring buffer or bpf_ktime_get_boot_ns before 5.8: the agent uses the classic tracepoint, the perf buffer and CLOCK_MONOTONIC";
  return {
    name,
    status: "warn",
    detail:
      `Linux ${release}: ${missing} (vendor kernels may backport more; upgrade to 5.8+ for all)`,
  };
}

function checkRingBuffer(v: Config, ringbuf: Offer): CheckResult {
  const name = "ringbuf";
  if (v.perfBuffer) return { name, status: "pass", detail: "perf buffer chosen by perf_buffer" };
  if (ringbuf === true) {
    return {
      name,
      status: "pass",
      detail: "BPF ring buffer available: records arrive in order, one shared buffer",
    };
  }
  const fallback =
    "the agent falls back to the perf buffer, one per CPU with ring_bytes split between them (raise ring_bytes if kernel drops appear)";
  return {
    name,
    status: "warn",
    detail: ringbuf === false
      ? `no BPF ring buffer (Linux 5.8+): ${fallback}`
      : `${cannotTell(ringbuf)}: without a BPF ring buffer (Linux 5.8+) ${fallback}`,
  };
}

function checkClock(bootNs: Offer): CheckResult {
  const name = "clock";
  if (bootNs === true) {
    return {
      name,
      status: "pass",
      detail: "flow times from CLOCK_BOOTTIME (correct across suspend)",
    };
  }
  return lacking(
    name,
    bootNs,
    "no bpf_ktime_get_boot_ns (Linux 5.8+)",
    "flow times use CLOCK_MONOTONIC and shift by the time the host spent suspended",
  );
}

function checkTracepoint(tpBtf: Offer): CheckResult {
  const name = "tracepoint";
  if (tpBtf === true) {
    return { name, status: "pass", detail: "sock:inet_sock_set_state, attached as tp_btf" };
  }
  return {
    name,
    status: "fail",
    detail: tpBtf === false
      ? "no BTF-typed sock:inet_sock_set_state tracepoint (needs Linux 5.5+ with CONFIG_TRACEPOINTS)"
      : cannotTell(tpBtf),
  };
}

function checkSockops(v: Config, p: DoctorProbes, sockops: Offer): CheckResult {
  const name = "sock_ops";
  const fallback =
    "tracepoints alone capture: a close the kernel skips on a busy CPU is recovered at destroy, or counted as a recursion miss in every batch";
  if (v.cgroupPath === undefined) {
    return { name, status: "warn", detail: `turned off by an empty cgroup_path: ${fallback}` };
  }
  const path = v.cgroupPath === "auto" ? cgroup2Root(p.mounts()) : v.cgroupPath;
  if (path === undefined) {
    return { name, status: "warn", detail: `no cgroup v2 mounted: ${fallback}` };
  }
  // Without CAP_NET_ADMIN the probe cannot load a sock_ops program either: say what to grant.
  if (!hasNetAdmin(p.capabilities())) {
    return {
      name,
      status: "warn",
      detail: `missing CAP_NET_ADMIN, which sock_ops needs (grant it): ${fallback}`,
    };
  }
  if (sockops !== true) {
    return lacking(name, sockops, "no bpf_skc_to_tcp_sock for sock_ops (Linux 5.9+)", fallback);
  }
  return {
    name,
    status: "pass",
    detail: `sock_ops on cgroup ${path} follows every socket there (never skipped under load)`,
  };
}

function checkSeeding(
  v: Config,
  iterTcp: Offer,
  sockopsFollow: Offer,
  release: string,
): CheckResult {
  const name = "seeding";
  if (v.noSeed) return { name, status: "skip", detail: "turned off by no_seed" };
  const fixedIn = iterTcp === true ? tcpIteratorBugFixedIn(release) : undefined;
  if (fixedIn) {
    return { name, status: "warn", detail: tcpIteratorBugWarning(release, fixedIn) };
  }
  if (iterTcp === true) {
    // The seeded sockets' closes then reach sock_ops: the state tracepoint is detached once no
    // socket is left that sock_ops does not follow.
    const followed = sockopsFollow === true ? ", and sock_ops follows them" : "";
    return {
      name,
      status: "pass",
      detail: `sockets open at start are seeded (TCP socket iterator)${followed}`,
    };
  }
  return lacking(
    name,
    iterTcp,
    "no TCP socket iterator (Linux 5.9+)",
    "sockets already open when the agent starts are not seeded",
  );
}

function checkInterim(v: Config, mapWalk: Offer): CheckResult {
  const name = "interim";
  const minAgeMs = v.interimInterval ?? v.batchInterval;
  if (minAgeMs === 0) return { name, status: "skip", detail: "turned off by interim_interval 0" };
  if (mapWalk === true) {
    return {
      name,
      status: "pass",
      detail: `sockets open longer than ${
        showDuration(minAgeMs)
      } get an interim record at each window end (map iterator)`,
    };
  }
  return lacking(
    name,
    mapWalk,
    "no map walk from an iterator (Linux 5.13+)",
    "long-lived connections get no interim records, only their record at close",
  );
}

function checkSweep(v: Config, sweep: Offer, ringbuf: Offer): CheckResult {
  const name = "sweep";
  if (v.perfBuffer || ringbuf === false) {
    return {
      name,
      status: "warn",
      detail:
        "no sweep with the perf buffer: a close and destroy the kernel runs no program for loses its record",
    };
  }
  if (sweep === true) {
    return {
      name,
      status: "pass",
      detail:
        "a socket whose close and destroy the kernel ran no program for is recorded by the sweep (map iterator)",
    };
  }
  return lacking(
    name,
    sweep,
    "no map walk from an iterator (Linux 5.13+)",
    "a close and destroy the kernel runs no program for loses its record",
  );
}

function checkMount(p: DoctorProbes, type: string, target: string, why: string): CheckResult {
  const name = type === "bpf" ? "bpffs" : type;
  if (p.mounts().get(target) === type) {
    return { name, status: "pass", detail: `mounted at ${target}` };
  }
  if (!why) {
    return { name, status: "pass", detail: `not mounted at ${target} (not needed with tp_btf)` };
  }
  return {
    name,
    status: "warn",
    detail:
      `not mounted at ${target}; ${why}: the agent mounts it at start (or run: mount -t ${type} nodev ${target})`,
  };
}

function checkPrivileges(p: DoctorProbes): CheckResult {
  const name = "privileges";
  if (hasBpfPrivileges(p.capabilities())) {
    return {
      name,
      status: "pass",
      detail: "may load BPF programs (CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON)",
    };
  }
  return {
    name,
    status: "fail",
    detail:
      "missing CAP_BPF and CAP_PERFMON (run as root, or grant CAP_BPF CAP_PERFMON CAP_SYS_RESOURCE, e.g. AmbientCapabilities= in the systemd unit)",
  };
}

const CAP_SYS_RESOURCE = 24n;

function checkMemlock(p: DoctorProbes, kernel: Version): CheckResult {
  const name = "memlock";
  if (atLeast(kernel, 5, 11)) {
    return {
      name,
      status: "pass",
      detail: "BPF memory is charged to the cgroup (5.11+); RLIMIT_MEMLOCK does not apply",
    };
  }
  const limit = p.memlockLimit();
  if (limit === "unlimited") return { name, status: "pass", detail: "RLIMIT_MEMLOCK unlimited" };
  if ((p.capabilities() & (1n << CAP_SYS_RESOURCE)) !== 0n) {
    return {
      name,
      status: "pass",
      detail: `RLIMIT_MEMLOCK ${mib(limit)}; libbpf raises it at load (CAP_SYS_RESOURCE)`,
    };
  }
  return {
    name,
    status: "warn",
    detail: `RLIMIT_MEMLOCK ${
      mib(limit)
    } and BPF maps count against it before Linux 5.11: loading may fail (set LimitMEMLOCK=infinity in the unit, or grant CAP_SYS_RESOURCE)`,
  };
}

/** The agent's programs run about 20 times per connection: sock_ops 17, each destroy program twice. */
function checkBpfStats(p: DoctorProbes): CheckResult {
  const name = "bpf_stats";
  if (!p.bpfStatsEnabled()) {
    return { name, status: "pass", detail: "off: BPF programs run without being timed" };
  }
  return {
    name,
    status: "warn",
    detail:
      `${BPF_STATS_SYSCTL} is 1: the kernel times every BPF program run, the agent's 20 or so per connection too (write 0 to it once profiling is done)`,
  };
}

function checkLibrary(p: DoctorProbes): CheckResult {
  try {
    return { name: "library", status: "pass", detail: `loaded ${p.loadLibrary()}` };
  } catch (error) {
    return { name: "library", status: "fail", detail: errorText(error) };
  }
}

function checkLock(p: DoctorProbes, path: string, pinDir: string): CheckResult {
  const name = "instance";
  const dir = dirname(path);
  if (!p.exists(dir)) {
    return {
      name,
      status: "fail",
      detail: `lock file directory ${dir} does not exist (create it or set lock_file)`,
    };
  }
  let state: LockState;
  try {
    state = p.instanceLock(path);
  } catch (error) {
    return {
      name,
      status: "fail",
      detail: `Cannot open lock file ${path}: ${errorText(error)} (set lock_file)`,
    };
  }
  if (!state.held) {
    const left = p.pinnedCaptures(pinDir);
    if (left.length > 0) {
      return {
        name,
        status: "warn",
        detail: `no agent running, but BPF programs it left attached capture into ${
          left.join(", ")
        } (start the agent to collect what they hold, or run flowexporter detach --pin-dir ${pinDir} to end them)`,
      };
    }
    return { name, status: "pass", detail: `no agent running (lock ${path} is free)` };
  }
  const running = `an agent is running${
    state.pid ? ` (pid ${state.pid})` : ""
  }: lock ${path} is held`;
  let others: string[] = [];
  try {
    others = p.otherVersionCaptures(pinDir);
  } catch {
    // The library check says why it cannot be loaded.
  }
  if (others.length > 0) {
    return {
      name,
      status: "warn",
      detail: `${running}, but a capture of another agent version still runs beside its own: ${
        others.join(", ")
      } (the agent could not retire it when it started: its log says why; restart the agent to try again)`,
    };
  }
  return { name, status: "pass", detail: running };
}

async function checkCertificate(p: DoctorProbes, config: EffectiveConfig): Promise<CheckResult> {
  const name = "certificate";
  const { certPath, idRule } = config.values;
  const now = p.now();
  try {
    const id = await p.readCertificate(certPath, idRule, now);
    const days = Math.floor((id.notAfter.getTime() - now.getTime()) / DAY_MS);
    const what = `workload ID ${JSON.stringify(id.workloadId)} from the ${
      id.from === "uri-san" ? "URI SAN" : "subject CN"
    } of ${certPath}`;
    if (days < EXPIRY_WARNING_DAYS) {
      return {
        name,
        status: "warn",
        detail: `${what}, expires in ${days} days at ${id.notAfter.toISOString()} (renew it)`,
      };
    }
    return { name, status: "pass", detail: `${what}, valid until ${id.notAfter.toISOString()}` };
  } catch (error) {
    if (!(error instanceof CertificateError)) throw error;
    // Without a certificate the agent runs, sockets no map claims just have no host identity.
    if (config.sources.certPath === "default" && error.cause instanceof Deno.errors.NotFound) {
      return {
        name,
        status: "warn",
        detail:
          `no certificate at ${certPath}: sockets no identity map entry claims get no host identity (install one there or set cert_path)`,
      };
    }
    return { name, status: "fail", detail: error.message };
  }
}

async function checkCollector(p: DoctorProbes, v: Config): Promise<CheckResult> {
  const name = "collector";
  const url = v.collectorUrl;
  if (url === undefined) {
    return {
      name,
      status: "skip",
      detail: "not configured (batches stay in the spool; set collector_url to ship them)",
    };
  }
  let sender: Sender;
  try {
    // The shipping path's own client: same TLS files, token and timeout handling. Its probe is
    // a HEAD without a body, so nothing is ingested.
    sender = await Sender.create({
      url,
      tokenFile: v.tokenFile,
      caFile: v.caFile,
      certFile: v.clientCert,
      keyFile: v.clientKey,
      timeoutMs: COLLECTOR_TIMEOUT_MS,
      maxAttempts: 1,
      userAgent: "flowexporter-doctor",
      transport: p.collectorTransport,
    });
  } catch (error) {
    return { name, status: "fail", detail: errorText(error) };
  }
  try {
    const result = await sender.probe();
    if (result.outcome === "delivered") {
      return { name, status: "pass", detail: `${url} answered HTTP ${result.status}` };
    }
    if (result.outcome === "rejected") {
      if (result.status === 401 || result.status === 403) {
        return {
          name,
          status: "fail",
          detail:
            `${url} refused the credentials: ${result.reason} (check token_file, client_cert and client_key)`,
        };
      }
      return { name, status: "pass", detail: `${url} answered HTTP ${result.status} (reachable)` };
    }
    if (result.reason.startsWith("HTTP ")) {
      return { name, status: "warn", detail: `${url} is reachable but failing: ${result.reason}` };
    }
    return {
      name,
      status: "fail",
      detail: `Cannot reach ${url}: ${result.reason} (check the URL, DNS, routes and firewalls)`,
    };
  } finally {
    sender.close();
  }
}

async function checkSpool(p: DoctorProbes, dir: string): Promise<CheckResult> {
  const name = "spool";
  const found = await p.dirState(dir);
  if (found.state === "writable") return { name, status: "pass", detail: `${dir} is writable` };
  if (found.state === "creatable") {
    return {
      name,
      status: "pass",
      detail: `${dir} does not exist yet; the agent creates it in ${found.parent}`,
    };
  }
  return {
    name,
    status: "fail",
    detail: `Cannot use spool directory ${dir}: ${found.problem} (fix it or set spool_dir)`,
  };
}

/** Probes a directory by creating and removing a file in it (or in its nearest existing parent). */
async function dirState(path: string): Promise<DirState> {
  let dir = path;
  for (;;) {
    try {
      const info = await Deno.stat(dir);
      if (!info.isDirectory) return { state: "unusable", problem: `${dir} is not a directory` };
      break;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        return { state: "unusable", problem: errorText(error) };
      }
      const parent = dirname(dir);
      if (parent === dir) return { state: "unusable", problem: "no existing parent directory" };
      dir = parent;
    }
  }
  try {
    await Deno.remove(await Deno.makeTempFile({ dir, prefix: ".flowexporter-doctor-" }));
  } catch (error) {
    return { state: "unusable", problem: `cannot write in ${dir}: ${errorText(error)}` };
  }
  return dir === path ? { state: "writable" } : { state: "creatable", parent: dir };
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}
