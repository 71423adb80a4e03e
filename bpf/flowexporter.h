/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * flowexporter: layouts shared by the BPF program (bpf/flowexporter.bpf.c),
 * the C shim (ffi/flowexporter.c) and, through its documented copy in
 * lib/decode.ts and identity/, the TypeScript side.
 *
 * Three contracts live here and change only on purpose:
 *   - struct fe_flow: one closed TCP socket, as the kernel side emits it,
 *     or (FE_FLAG_INTERIM) a snapshot of one still open. Bump
 *     FE_FLOW_VERSION when its layout or the meaning of a field or flag
 *     changes.
 *   - struct fe_sock_state: what the kernel side keeps per open socket in
 *     the pinned `slots` (struct fe_slot) or `flows` map, which outlive the
 *     agent process so that a restart or upgrade loses nothing. Bump FE_STATE_VERSION when it, the
 *     record or any other pinned capture map changes: the capture pin
 *     directory carries it in its name, and an agent reuses only its own.
 *   - the pinned identity maps' keys and values (struct fe_ip_key,
 *     struct fe_port_key, struct fe_workload). Bump FE_MAPS_VERSION when
 *     they change; the pin directory carries the version in its name.
 *
 * Byte order: integers are host order (little endian on x86_64 and
 * aarch64) unless a field says "network order".
 */
#ifndef __FLOWEXPORTER_H
#define __FLOWEXPORTER_H

#define FE_FLOW_VERSION 4
#define FE_MAPS_VERSION 1
/*
 * Only the upgrade test defines it otherwise: its shim of another state
 * version (the Makefile's other-state build) stands for the agent being
 * upgraded from.
 */
#ifndef FE_STATE_VERSION
#define FE_STATE_VERSION 3
#endif

/*
 * A record's cookie carries fe_sock_state.connection from this bit up: a
 * socket's second connection is a flow of its own, with an ID of its own.
 * Kernel cookies count sockets from 1 and stay below 2^48 (a million sockets
 * a second for 8 years); the first connection's cookie is the kernel's. The
 * count wraps after 65 535 connections of one socket.
 */
#define FE_CONNECTION_SHIFT 48

/* Workload IDs: UTF-8, at most 127 bytes, NUL-padded to 128 bytes. */
#define FE_WORKLOAD_ID_LEN 128

/* Address families as carried in records (not AF_* numbers). */
#define FE_FAMILY_IPV4 4
#define FE_FAMILY_IPV6 6

enum fe_direction {
	FE_DIR_UNKNOWN = 0,  /* socket already open when the agent started */
	FE_DIR_OUTBOUND = 1, /* this host connected */
	FE_DIR_INBOUND = 2,  /* this host accepted */
};

/* Where local_workload_id came from (resolution order: port map, IP map, host). */
enum fe_identity_source {
	FE_ID_UNKNOWN = 0,
	FE_ID_HOST = 1,
	FE_ID_IP_MAP = 2,
	FE_ID_PORT_MAP = 3,
};

/* fe_flow.close_state when the CLOSE transition was not seen (record emitted at socket destruction). */
#define FE_STATE_UNKNOWN 0

/* fe_flow.flags */
#define FE_FLAG_SEEDED (1 << 0)  /* t_start is when the agent first saw the socket: the flow began earlier */
#define FE_FLAG_SOCKOPS (1 << 1) /* the close was seen by the sock_ops program (not a tracepoint) */
/*
 * An interim record: a snapshot of a socket that is still open (taken by the
 * snapshot_flows iterator). t_end_ns is the snapshot time, close_state the
 * socket's state then, error its sk_err then; the counters are cumulative.
 * The socket's final record (without this flag) follows at close.
 */
#define FE_FLAG_INTERIM (1 << 2)
/*
 * No program saw the socket's close or destroy: the sweep (sweep_flows)
 * found its state with the socket gone. close_state is FE_STATE_UNKNOWN;
 * t_end_ns is when it was last seen open (its start, or the pass before,
 * whose time the pinned last_sweep keeps); endpoints are the state's;
 * counters and error are read from the socket's memory when the kernel has
 * not reused it yet, else zero.
 */
#define FE_FLAG_SWEPT (1 << 3)

/* Per-CPU counters in the `drops` map. */
enum fe_drop_reason {
	FE_DROP_OUTPUT = 0, /* ring/perf buffer full: record lost */
	FE_DROP_MAX = 1,
};

struct fe_flow {
	__u64 t_start_ns;     /* CLOCK_BOOTTIME ns: first state seen (connect, or the accepted socket's handshake) */
	__u64 t_end_ns;       /* CLOCK_BOOTTIME ns: transition to TCP_CLOSE (FE_FLAG_INTERIM: the snapshot) */
	__u64 bytes_sent;     /* payload bytes sent, retransmissions included */
	__u64 bytes_acked;    /* payload bytes the peer acknowledged (SYN/FIN excluded) */
	__u64 bytes_received; /* payload bytes received in order (FIN excluded) */
	__u64 bytes_retrans;  /* payload bytes retransmitted: bytes_sent = payload + bytes_retrans */
	__u64 cookie;         /* socket cookie (unique per socket within one boot), with the socket's
			       * earlier connections counted from bit FE_CONNECTION_SHIFT up */
	__u32 segs_out;       /* segments sent, retransmissions and pure ACKs included */
	__u32 segs_in;        /* segments received */
	__u32 total_retrans;  /* segments retransmitted */
	__u32 srtt_us;        /* smoothed RTT, microseconds */
	__u32 min_rtt_us;     /* minimum RTT seen, microseconds (0: none) */
	__u32 delivered;      /* data segments delivered to the peer */
	__u32 lost;           /* data segments marked lost */
	__u32 _pad0;
	__u8 local_ip[16];    /* network order; IPv4 as ::ffff:a.b.c.d */
	__u8 remote_ip[16];   /* network order; IPv4 as ::ffff:a.b.c.d */
	__u16 local_port;     /* host order */
	__u16 remote_port;    /* host order */
	__u8 family;          /* FE_FAMILY_IPV4 or FE_FAMILY_IPV6 (v4-mapped IPv6 reported as IPv4) */
	__u8 direction;       /* enum fe_direction */
	__u8 close_state;     /* kernel TCP state the socket closed from (TCP_ESTABLISHED = 1, ...; FE_FLAG_INTERIM: its state at the snapshot) */
	__u8 identity_source; /* enum fe_identity_source */
	__u8 flags;           /* FE_FLAG_* */
	__u8 error;           /* sk_err at close: ECONNREFUSED, ECONNRESET, ETIMEDOUT, or 0 */
	__u8 _pad1[6];
	char workload_id[FE_WORKLOAD_ID_LEN]; /* NUL-padded; empty when identity_source is unknown */
};

/* Bytes a record of `len` bytes takes in a BPF ring buffer: its header, then the record, rounded to 8. */
#define FE_RING_SPAN(len) (((len) + BPF_RINGBUF_HDR_SZ + 7) / 8 * 8)

/* Key of the pinned `ip_workload` map: the socket's local address. */
struct fe_ip_key {
	__u8 addr[16]; /* network order; IPv4 as ::ffff:a.b.c.d */
};

/* Key of the pinned `port_workload` map: (local IPv4, local port). */
struct fe_port_key {
	__u8 addr[4]; /* IPv4, network order */
	__u16 port;   /* network order (big endian): 8080 is bytes 1f 90 */
	__u16 _pad;   /* must be zero */
};

/* Value of `ip_workload`, `port_workload` and the agent's `host_workload`. */
struct fe_workload {
	char id[FE_WORKLOAD_ID_LEN];
};

/* A socket's endpoints, kept in its state; IPv4 as ::ffff:a.b.c.d. */
struct fe_endpoints {
	__u8 local[16];	      /* network order */
	__u8 remote[16];      /* network order */
	__u16 local_port;     /* host order */
	__u16 remote_port;    /* host order */
	__u8 family;	      /* FE_FAMILY_IPV4 or FE_FAMILY_IPV6 */
	__u8 _pad[3];
};

/*
 * A socket's state: in a slot of `slots`, or the value of `flows` (key:
 * socket cookie) when its slot was held. `emitted` marks a
 * socket whose record is out: the other capture path, or an overlapping
 * program during an upgrade, sees it and does not emit again. The entry
 * goes when the socket is destroyed or, when no program saw that, at the
 * next sweep (sweep_flows).
 *
 * `connection` counts the connections the socket had before this one: a
 * socket can connect() again after a failed connect or a disconnect
 * (connect(AF_UNSPEC)), and each connection is a flow of its own.
 */
struct fe_sock_state {
	__u64 t_start_ns;
	__u8 direction;
	__u8 flags;
	__u8 identity_source;
	__u8 resolved;
	__u8 emitted;
	/*
	 * Scratch of the interim pass (snapshot_flows): set on the states a
	 * run has visited. Any value is valid at any time (each pass clears
	 * it), so it took the place of padding without a new state version.
	 */
	__u8 snapshot_mark;
	__u16 connection;
	/*
	 * The socket's kernel address and its endpoints: the sweep finds a
	 * socket gone when that address no longer holds its cookie (or holds
	 * it closed), and records it from these endpoints.
	 */
	__u64 sk;
	struct fe_endpoints ends;
	struct fe_workload workload;
};

/*
 * Value of the pinned `slots` map (key: the cookie's low bits): the states
 * of most sockets, held without a lock. `cookie` is 0 when the slot is free;
 * a claimer swaps in the socket's cookie with FE_SLOT_BUSY set, writes the
 * state, then clears the bit; the slot is given back by swapping the cookie
 * to 0. One word says both whose the slot is and whether its state is whole,
 * so each step is one compare-and-swap. A socket whose slot is held goes to
 * `flows`, and `spilled` counts the sockets of this slot there: only when it
 * is not 0 does a lookup go to `flows`. A cookie is in one of the two at
 * most. (Cookies count up from 1: none has the top bit.)
 */
#define FE_SLOT_BUSY (1ULL << 63)

struct fe_slot {
	__u64 cookie;
	__u32 spilled;
	__u32 _pad;
	struct fe_sock_state st;
};

#endif /* __FLOWEXPORTER_H */
