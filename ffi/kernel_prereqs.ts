/**
 * Checks what the BPF side needs from the host before loading it, mounting
 * tracefs and bpffs when they are missing, so a failure is one clear line
 * instead of a libbpf errno.
 *
 * @module
 */
import { cString, type Native } from "./symbols.ts";

/** A host problem the operator has to fix; the message says what to do. */
export class PrereqError extends Error {
  override name = "PrereqError";
}

/** Kernel BTF, needed for CO-RE. */
export const BTF_PATH = "/sys/kernel/btf/vmlinux";
/** Where tracefs is mounted on current distributions. */
export const TRACEFS_PATH = "/sys/kernel/tracing";
/** The bpffs mount the identity maps are pinned under. */
export const BPFFS_PATH = "/sys/fs/bpf";
/** 1 while the kernel times every BPF program run (two clock reads more in each). */
export const BPF_STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled";

/** Whether the kernel times every BPF program run; false where the sysctl is missing (before 5.8). */
export function bpfStatsEnabled(): boolean {
  try {
    return Deno.readTextFileSync(BPF_STATS_SYSCTL).trim() !== "0";
  } catch {
    return false;
  }
}

const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;
const CAP_PERFMON = 38n;
const CAP_BPF = 39n;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The process's effective capability set, from /proc/self/status. */
export function effectiveCapabilities(): bigint {
  const status = Deno.readTextFileSync("/proc/self/status");
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? "0";
  return BigInt(`0x${hex}`);
}

/** True when the process may load and attach tracing BPF programs. */
export function hasBpfPrivileges(caps = effectiveCapabilities()): boolean {
  const has = (cap: bigint) => (caps & (1n << cap)) !== 0n;
  return has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
}

/** True when the process may load and attach cgroup programs such as sock_ops. */
export function hasNetAdmin(caps = effectiveCapabilities()): boolean {
  const has = (cap: bigint) => (caps & (1n << cap)) !== 0n;
  return has(CAP_SYS_ADMIN) || has(CAP_NET_ADMIN);
}

/** Mount points from /proc/self/mounts: target → filesystem type. */
export function mounts(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of Deno.readTextFileSync("/proc/self/mounts").split("\n")) {
    const [, target, type] = line.split(" ");
    if (target) out.set(target, type);
  }
  return out;
}

/**
 * Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
 * hybrid one; undefined on a host with cgroup v1 only.
 */
export function cgroup2Root(table = mounts()): string | undefined {
  for (const [target, type] of table) if (type === "cgroup2") return target;
  return undefined;
}

function ensureMounted(native: Native, type: string, target: string, why: string): void {
  if (mounts().get(target) === type) return;
  const err = native.fe_mount(cString(type), cString(target));
  if (err !== 0) {
    throw new PrereqError(
      `Cannot mount ${type} at ${target}: errno ${-err} (${why}; mount it with: mount -t ${type} nodev ${target})`,
    );
  }
}

/**
 * Verifies privileges and BTF, and mounts tracefs and bpffs when absent.
 *
 * @throws {PrereqError} with a one-line message naming what to fix
 */
export function prepareKernel(native: Native): void {
  if (!hasBpfPrivileges()) {
    throw new PrereqError(
      "Cannot load the BPF program: missing CAP_BPF and CAP_PERFMON (run as root or grant both capabilities)",
    );
  }
  if (!exists(BTF_PATH)) {
    throw new PrereqError(
      `Cannot find kernel BTF at ${BTF_PATH} (flowexporter needs Linux 5.8 or newer built with CONFIG_DEBUG_INFO_BTF=y)`,
    );
  }
  ensureMounted(native, "tracefs", TRACEFS_PATH, "the classic destroy tracepoint needs it");
  ensureMounted(native, "bpf", BPFFS_PATH, "the identity maps are pinned there");
}
