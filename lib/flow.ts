/**
 * The flow record: one closed TCP socket on this host, as every stage of the
 * pipeline (decode → batch → encode → ship) sees it.
 *
 * @module
 */

/** Which side opened the connection, seen from the local socket. */
export type Direction = "outbound" | "inbound" | "unknown";

/** Where `localWorkloadId` came from; resolution order is port map, IP map, host. */
export type IdentitySource = "port-map" | "ip-map" | "host" | "unknown";

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
 *   the record was made when the socket was destroyed; `closeState` is then "UNKNOWN".
 */
export type FlowEnd = "normal" | "reset" | "aborted" | "refused" | "timeout" | "failed" | "unknown";

/** One closed TCP socket. Times are wall-clock nanoseconds since the Unix epoch. */
export interface FlowRecord {
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
  /** Transition to CLOSE, wall-clock ns. */
  tEndNs: bigint;
  /** True when the socket predates the agent: the flow began before `tStartNs`. */
  seeded: boolean;
  direction: Direction;
  /** Kernel TCP state the socket closed from, e.g. "FIN_WAIT2", "SYN_SENT". */
  closeState: string;
  end: FlowEnd;
  /** Socket error at close (errno), 0 for none. */
  error: number;
  /** Payload bytes sent, retransmissions included. */
  bytesSent: number;
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
