/**
 * Test helpers for the cluster collector: flows shifted to the present (cluster nodes prune
 * ownership by the wall clock), batches an agent would send, a poster that retries like the
 * agent's spool, and waiting on a condition.
 *
 * @module
 */

import { CLUSTER_SERVERS } from "../collector/cluster/local_cluster.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { batchBody, type FlowSpec, makeFlow, postBatch, T0_NS } from "./_batches.ts";

/** Whether the cluster's servers are installed (the tests fail without them under CI). */
export function clusterServersInstalled(): boolean {
  return CLUSTER_SERVERS.every((name) =>
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].some((dir) => {
      try {
        return Deno.statSync(`${dir}/${name}`).isFile;
      } catch {
        return false;
      }
    })
  );
}

/** How far test times (seconds after T0 in {@linkcode makeFlow}) are moved: to 10 min ago. */
const SHIFT_NS = BigInt(Date.now()) * 1_000_000n - 600_000_000_000n - T0_NS;

/** {@linkcode makeFlow} at the present: `startS` counts from 10 minutes ago. */
export function recentFlow(spec: FlowSpec): FlowRecord {
  const flow = makeFlow(spec);
  return { ...flow, tStartNs: flow.tStartNs + SHIFT_NS, tEndNs: flow.tEndNs + SHIFT_NS };
}

/** A batch as an agent sends it. */
export interface TestBatch {
  hostname: string;
  sequence: number;
  flows: FlowRecord[];
  body: Uint8Array;
}

/** A gzipped batch of `flows`. */
export function testBatch(hostname: string, sequence: number, flows: FlowRecord[]): TestBatch {
  return { hostname, sequence, flows, body: batchBody(hostname, sequence, flows) };
}

/**
 * Posts `batch` to the first of `urls` and on, as the agent's spool does: the same batch again
 * after any answer but 2xx and after connection errors, until one node acknowledges it.
 *
 * @returns the answer that acknowledged it (`status`: `stored` or `duplicate`), and the
 *   refusals before it (status codes; 0 for a connection error)
 */
export async function postUntilStored(
  urls: () => string[],
  batch: TestBatch,
  deadlineMs = 120_000,
): Promise<{ status: string; refusals: number[] }> {
  const refusals: number[] = [];
  const deadline = Date.now() + deadlineMs;
  for (let i = 0;; i++) {
    const list = urls();
    const url = list[i % list.length];
    let status = 0;
    let answer = "";
    try {
      const res = await postBatch(url, batch.body);
      answer = await res.text();
      status = res.status;
    } catch {
      status = 0;
    }
    if (status >= 200 && status < 300) return { status: JSON.parse(answer).status, refusals };
    refusals.push(status);
    if (Date.now() > deadline) {
      throw new Error(
        `Batch ${batch.hostname}:${batch.sequence} not stored in ${deadlineMs} ms: ${refusals}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(50 * refusals.length, 500)));
  }
}

/** Polls `condition` until it holds; fails naming `what` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 90_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 20;; delay = Math.min(delay * 2, 250)) {
    if (await condition()) return;
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}
