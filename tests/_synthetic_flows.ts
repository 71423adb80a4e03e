/**
 * Realistic synthetic flow records for tests and benchmarks: many distinct addresses and
 * ports, ~40-character workload IDs, every enumeration value in turn, one boot and a distinct
 * socket cookie per flow. Deterministic in `i`.
 *
 * @module
 */

import type { Direction, FlowEnd, FlowRecord, IdentitySource } from "../lib/flow.ts";
import { parseBootId } from "../lib/flow_id.ts";

/** The boot ID of every synthetic flow (one instance, as the agent shares its own). */
export const SYNTHETIC_BOOT_ID: Uint8Array = parseBootId("5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60");
/** Cookie of flow 0: the kernel counts sockets from boot, and a host has opened many. */
const FIRST_COOKIE = 40_961n;

const DIRECTIONS: readonly Direction[] = ["outbound", "inbound", "unknown"];
const SOURCES: readonly IdentitySource[] = ["port-map", "ip-map", "host", "unknown"];
const ENDS: readonly FlowEnd[] = ["normal", "normal", "normal", "reset", "aborted", "refused"];
const STATES = ["FIN_WAIT2", "TIME_WAIT", "LAST_ACK", "CLOSE_WAIT", "SYN_SENT", "ESTABLISHED"];

/**
 * The `i`-th synthetic flow: IPv4 for most `i`, IPv6 for every 8th, ending near `baseNs`.
 *
 * @param i index; distinct indexes give distinct cookies, and distinct 5-tuples up to 2^24
 * @param baseNs wall-clock ns the flows end around
 * @returns a valid {@linkcode FlowRecord}
 */
export function syntheticFlow(i: number, baseNs = 1_767_225_600_000_000_000n): FlowRecord {
  const v6 = i % 8 === 7;
  const local = v6
    ? Uint8Array.of(0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (i >> 8) & 0xff, i & 0xff)
    : Uint8Array.of(10, 0, (i >> 8) & 0x0f, i & 0xff);
  const remote = v6
    ? Uint8Array.of(0x26, 0x06, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, (i >> 16) & 0xff, 0, 0, i & 0xff)
    : Uint8Array.of(172, 16 + ((i >> 16) & 0x0f), (i >> 8) & 0xff, (i * 7) & 0xff);
  const durationNs = BigInt(1 + ((i * 7919) % 5_000_000)) * 1000n;
  const tEndNs = baseNs + BigInt(i) * 20_000n;
  const bytesSent = (i * 2_654_435_761) % 1_000_000;
  const totalRetrans = i % 13 === 0 ? i % 5 : 0;
  const bytesRetrans = Math.min(bytesSent, totalRetrans * 1448); // full-sized segments
  return {
    bootId: SYNTHETIC_BOOT_ID,
    cookie: FIRST_COOKIE + BigInt(i),
    family: v6 ? 6 : 4,
    localIp: local,
    localPort: i % 3 === 0 ? 8080 : 32768 + (i % 28232),
    remoteIp: remote,
    remotePort: i % 3 === 0 ? 40000 + (i % 20000) : [443, 5432, 6379, 9092][i % 4],
    localWorkloadId: `k8s://team-${i % 37}/payments-api-7d9f8c6b5-${(i % 997).toString(36)}`,
    identitySource: SOURCES[i % SOURCES.length],
    tStartNs: tEndNs - durationNs,
    tEndNs,
    recordKind: "final",
    seeded: i % 50 === 0,
    direction: DIRECTIONS[i % DIRECTIONS.length],
    closeState: STATES[i % STATES.length],
    end: ENDS[i % ENDS.length],
    error: i % 6 === 5 ? 111 : 0,
    bytesSent,
    bytesRetrans,
    bytesAcked: Math.max(0, bytesSent - bytesRetrans - (i % 4 === 0 ? 17 : 0)),
    bytesReceived: (i * 40_503) % 5_000_000,
    segsOut: 3 + (i % 900),
    segsIn: 2 + (i % 700),
    totalRetrans,
    srttUs: 80 + (i % 40_000),
    minRttUs: 40 + (i % 20_000),
    delivered: 1 + (i % 800),
    lost: i % 29 === 0 ? 1 : 0,
  };
}
