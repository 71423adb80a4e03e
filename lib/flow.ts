/**
 * The flow record: one TCP socket on this host, closed or (an interim record) still open, as
 * every stage of the pipeline (decode → batch → encode → ship) sees it.
 *
 * @module
 */

/*
 * The enumerations, once. Each list's index is the value the kernel side writes
 * (bpf/flowexporter.h: enum fe_direction, enum fe_identity_source; TCP states from
 * include/net/tcp_states.h) and the code on the wire (schema/flow_batch.cddl);
 * tests/flow_test.ts holds the header to them.
 */

/** Directions by `enum fe_direction` value and wire code. */
export const DIRECTIONS = ["unknown", "outbound", "inbound"] as const;

/** Which side opened the connection, seen from the local socket. */
export type Direction = typeof DIRECTIONS[number];

/** Identity sources by `enum fe_identity_source` value and wire code. */
export const IDENTITY_SOURCES = ["unknown", "host", "ip-map", "port-map"] as const;

/** Where `localWorkloadId` came from; resolution order is port map, IP map, host. */
export type IdentitySource = typeof IDENTITY_SOURCES[number];

/** Linux TCP states by number (include/net/tcp_states.h); 0 is a close the agent did not see. */
export const TCP_STATES = [
  "UNKNOWN",
  "ESTABLISHED",
  "SYN_SENT",
  "SYN_RECV",
  "FIN_WAIT1",
  "FIN_WAIT2",
  "TIME_WAIT",
  "CLOSE",
  "CLOSE_WAIT",
  "LAST_ACK",
  "LISTEN",
  "CLOSING",
  "NEW_SYN_RECV",
  "BOUND_INACTIVE",
] as const;

/**
 * Flow ends by wire code (`unknown` came with schema version 2, `open` with version 4, for
 * interim records).
 */
export const FLOW_ENDS = [
  "normal",
  "reset",
  "aborted",
  "refused",
  "timeout",
  "failed",
  "unknown",
  "open",
] as const;

/**
 * How the connection ended, derived from the state it closed from and the
 * socket error at close:
 * - `normal`: FIN handshake (either side closed first);
 * - `reset`: reset received from the peer;
 * - `aborted`: closed locally without a FIN handshake (SO_LINGER 0, or close with unread data: the kernel sends RST);
 * - `refused`: the connect was answered with RST;
 * - `timeout`: the kernel gave up retransmitting (connect or data);
 * - `failed`: the connect failed for another reason (e.g. unreachable);
 * - `unknown`: the kernel skipped the program at the close (it would have nested on a CPU), so
 *   the record was made when the socket was destroyed; `closeState` is then "UNKNOWN";
 * - `open`: not ended: the record is an interim one (see {@linkcode RecordKind}).
 */
export type FlowEnd = typeof FLOW_ENDS[number];

/** Record kinds by wire code (schema version 4; every record before was `final`). */
export const RECORD_KINDS = ["final", "interim"] as const;

/**
 * `final`: the record made when the socket closed, one per flow. `interim`: a snapshot of a flow
 * still open, made at a batch window's end (its `tEndNs` is the snapshot time, `end` is `open`,
 * its counters are cumulative since `tStartNs`); a flow has any number of them, then its final
 * record.
 */
export type RecordKind = typeof RECORD_KINDS[number];

/**
 * Which kernel program saw the close: `sock_ops` (the primary path, never skipped), `tracepoint`
 * (sockets sock_ops does not follow: seeded ones, or all of them without cgroup v2), `destroy`
 * (no program saw the close; the record was made when the socket was destroyed), `sweep` (no
 * program saw the close or the destroy; the agent's sweep found the socket gone, and the record
 * ends when the agent last saw it open).
 */
export type CloseSeenBy = typeof CLOSE_SEEN_BY[number];

/** The values of {@linkcode CloseSeenBy}. */
export const CLOSE_SEEN_BY = ["sock_ops", "tracepoint", "destroy", "sweep"] as const;

/**
 * One TCP socket: closed (a `final` record) or still open (an `interim` one). Times are
 * wall-clock nanoseconds since the Unix epoch.
 */
export interface FlowRecord {
  /**
   * The host's boot ID (16 bytes, /proc/sys/kernel/random/boot_id), shared by every record of
   * one boot. With `cookie` it names the flow: the kernel never reuses a cookie within a boot.
   */
  bootId: Uint8Array;
  /** The kernel's socket cookie: unique per socket within one boot. */
  cookie: bigint;
  /** 4 or 6; IPv4-mapped IPv6 sockets are reported as 4. */
  family: 4 | 6;
  /** Local address, 4 bytes (IPv4) or 16 bytes (IPv6), network order. */
  localIp: Uint8Array;
  localPort: number;
  /** Remote address, 4 or 16 bytes like `localIp`. */
  remoteIp: Uint8Array;
  remotePort: number;
  /** Workload that owned the local side at capture time; "" when unknown. */
  localWorkloadId: string;
  identitySource: IdentitySource;
  /** First state the agent saw (SYN_SENT or SYN_RECV), wall-clock ns. */
  tStartNs: bigint;
  /** Transition to CLOSE, wall-clock ns; for an interim record, the snapshot time. */
  tEndNs: bigint;
  /** Whether the socket had closed (`final`) or this is a snapshot of an open one (`interim`). */
  recordKind: RecordKind;
  /** True when the socket predates the agent: the flow began before `tStartNs`. */
  seeded: boolean;
  /**
   * Which program saw the close; known where the record was captured, not carried on the wire;
   * none for an interim record.
   */
  closeSeenBy?: CloseSeenBy;
  direction: Direction;
  /**
   * Kernel TCP state the socket closed from, e.g. "FIN_WAIT2", "SYN_SENT"; for an interim record,
   * its state at the snapshot.
   */
  closeState: string;
  end: FlowEnd;
  /** Socket error at close (errno; at the snapshot for an interim record), 0 for none. */
  error: number;
  /** Payload bytes sent, retransmissions included: `bytesSent` = payload + `bytesRetrans`. */
  bytesSent: number;
  /** Payload bytes retransmitted. */
  bytesRetrans: number;
  /** Payload bytes the peer acknowledged. */
  bytesAcked: number;
  /** Payload bytes received in order. */
  bytesReceived: number;
  segsOut: number;
  segsIn: number;
  totalRetrans: number;
  /** Smoothed RTT, microseconds. */
  srttUs: number;
  /** Minimum RTT, microseconds (0 when never measured). */
  minRttUs: number;
  /** Data segments delivered to the peer. */
  delivered: number;
  /** Data segments marked lost. */
  lost: number;
}
