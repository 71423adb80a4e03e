/**
 * The kernels whose TCP socket iterator can free a socket in use (CVE-2026-74714): it takes a
 * reference on a connection request the kernel has published but not yet counted. The agent runs
 * that iterator once when a capture starts, to seed the sockets already open; `flowexporter doctor`
 * warns on these kernels, and so does the agent when it seeds. The bug came with 5.15; the fix is
 * upstream commit e5fd3f5 ("bpf: tcp: Fix use-after-free in bpf_iter_tcp_established_batch()").
 *
 * @example
 * ```ts
 * import { tcpIteratorBugFixedIn } from "./tcp_iterator_bug.ts";
 * tcpIteratorBugFixedIn("6.18.44-1-amd64"); // "6.18.45"
 * tcpIteratorBugFixedIn("6.18.45"); // undefined
 * ```
 * @module
 */

/** The advisory's name, for messages. */
const TCP_ITERATOR_BUG = "CVE-2026-74714";

/** Affected releases: from the first series through the last, up to the first fixed release. */
const AFFECTED: readonly { first: string; last: string; fixed: string }[] = [
  { first: "5.15", last: "6.1", fixed: "6.1.183" },
  { first: "6.2", last: "6.6", fixed: "6.6.152" },
  { first: "6.7", last: "6.12", fixed: "6.12.104" },
  { first: "6.13", last: "6.18", fixed: "6.18.45" },
  { first: "6.19", last: "7.1", fixed: "7.1.9" },
];

/**
 * The first fixed release of the series of kernel `release` (`uname -r`) when that release has
 * the bug, else undefined (a fixed release, one older than the bug, or one it cannot read). A
 * distribution kernel may carry the fix under an older number: its changelog tells.
 */
export function tcpIteratorBugFixedIn(release: string): string | undefined {
  const version = parseRelease(release);
  if (!version) return undefined;
  for (const { first, last, fixed } of AFFECTED) {
    if (compare(version, parseRelease(first)!) < 0) continue;
    if (compare(version.slice(0, 2), parseRelease(last)!) > 0) continue;
    return compare(version, parseRelease(fixed)!) < 0 ? fixed : undefined;
  }
  return undefined;
}

/** What doctor and the agent's start say on an affected kernel: the risk, the fix, the way out. */
export function tcpIteratorBugWarning(release: string, fixedIn: string): string {
  return `Linux ${release} has ${TCP_ITERATOR_BUG}: the TCP socket iterator that seeds the open sockets when a capture starts can free a socket in use (fixed in ${fixedIn} and later): update the kernel, or set no_seed (those sockets' records then start at their close)`;
}

/** [major, minor, patch] of "6.18.44-1-amd64" (patch 0 when absent), or undefined. */
function parseRelease(release: string): number[] | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

function compare(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
