// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * flowexporter: one record per closed TCP socket, attributed to a workload
 * when the socket's local address and port become known.
 *
 * Programs:
 *   - on_sockops, a sock_ops program on the cgroup v2 root: the primary path.
 *     Cgroup programs are never skipped for recursion, unlike tracing
 *     programs, so it sees every close of every socket it follows: it
 *     follows a socket from connect() or from the accepted handshake, and
 *     asks for its state changes (BPF_SOCK_OPS_STATE_CB).
 *   - on_state_btf, on sock:inet_sock_set_state: the whole job where there
 *     is no sock_ops, and otherwise the closes of sockets sock_ops does not
 *     follow (those open before it attached). Where seed_flows can make
 *     sock_ops follow the seeded sockets too (follow_seeded), the shim
 *     detaches it once no open socket is left unfollowed (count_unfollowed):
 *     it ran 10 times a connection.
 *   - on_destroy_btf and on_destroy_tp, on tcp:tcp_destroy_sock: a close no
 *     program saw is recorded here, and the socket's state is deleted. With
 *     the state tracepoint detached, on_destroy_btf also records a connected
 *     socket nobody followed (an orphan of another network namespace, open
 *     since before the capture), whose close no program saw.
 *   - seed_flows, a TCP socket iterator: sockets already open at start, and
 *     with follow_seeded their state callbacks asked for.
 *   - count_unfollowed, a task file iterator: open TCP sockets that have a
 *     file, in any network namespace, whose state callbacks nobody asked for.
 *   - snapshot_flows, a map iterator the agent runs when it wants interim
 *     records: one per open socket it tracks, written to snapshot_out
 *     (never to the ring), off the per-event path.
 *   - sweep_flows, a map iterator the agent runs now and then, which walks
 *     the states: a socket whose close and destroy no program saw (the kernel
 *     skipped them) left its state behind; the sweep finds the socket gone
 *     and records it from its state (FE_FLAG_SWEPT).
 *
 * Per-socket state lives in `slots`, or in `flows` when its slot is held,
 * keyed by the socket cookie (never reused within a boot). The maps, the
 * buffer and the attachments are pinned by the shim, so capture goes on
 * while the agent restarts.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "flowexporter.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOL_TCP 6

/* Set by the shim between open and load. */
const volatile bool use_ringbuf = true;
/* sock_ops follows every new socket: the tracepoint then only closes what sock_ops does not follow. */
const volatile bool sockops_attached = false;
/*
 * The seeding iterator asks for the state callbacks of the sockets it seeds
 * (TCP_BPF_SOCK_OPS_CB_FLAGS, 6.13), so that sock_ops follows those too.
 */
const volatile bool follow_seeded = false;
const volatile bool use_boot_clock = true;
/* Wake the reader each time the data waiting grows by this much; below it the reader drains on a timer. */
const volatile __u64 wakeup_bytes = 1 << 20;

/* Sockets the iterator seeded; read by the shim. */
__u64 seeded = 0;
/* Seeded sockets whose state callbacks follow_seeded could not ask for; read by the shim. */
__u64 seeded_unfollowed = 0;
/* Open TCP sockets with a file that sock_ops does not follow, at the last count_unfollowed pass. */
__u64 unfollowed = 0;
/* Set by the shim when it detaches the state tracepoint: destroy then records unfollowed sockets. */
bool state_tracepoint_detached = false;
/* Sockets nobody followed that on_destroy_btf recorded (see handle_destroy); read by the shim. */
__u64 unfollowed_at_destroy = 0;
/* snapshot_flows skips sockets younger than this; the shim sets it before each pass. */
__u64 snapshot_min_age_ns = 0;
/* Set by the shim for the first run of a pass (see snapshot_flows). */
bool snapshot_first = false;
/* Set by snapshot_flows: records in snapshot_out, and whether states it has not visited remain. */
__u32 snapshot_written = 0;
bool snapshot_more = false;
/* Records sweep_flows made, and states of gone sockets whose record was out that it deleted. */
__u64 swept = 0;
__u64 swept_stale = 0;
/* The kernel ID of `flows`, set by the shim after the load: sweep_flows finds the map by it. */
__u32 flows_map_id = 0;
/* The states live in `slots` first (the kernel has BPF atomics, 5.12+); set by the shim. */
const volatile bool use_slots = false;
/* Size of `slots` minus one (a power of two); set by the shim. */
const volatile __u32 slots_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072); /* resized by the shim */
	__type(key, __u64); /* socket cookie */
	__type(value, struct fe_sock_state);
} flows SEC(".maps");

/*
 * The states of most sockets (struct fe_slot), `flows` taking those whose
 * slot is held: a socket is followed without a lock (see state_insert).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536); /* resized by the shim */
	__type(key, __u32);
	__type(value, struct fe_slot);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fe_ip_key);
	__type(value, struct fe_workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ip_workload SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct fe_port_key);
	__type(value, struct fe_workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_workload SEC(".maps");

/* One entry: the host identity from the certificate, written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fe_workload);
} host_workload SEC(".maps");

/* Ring buffer; the shim turns it into a perf event array when asked to. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the shim */
} events SEC(".maps");

/*
 * Scratch records for the perf buffer path (perf output copies from memory).
 * One per nesting level: sock_ops has no recursion guard, so a softirq can
 * emit on a CPU whose process context is halfway through a record.
 */
#define SCRATCH_LEVELS 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_LEVELS);
	__type(key, __u32);
	__type(value, struct fe_flow);
} scratch SEC(".maps");

/* Per CPU: how many emits are in progress, i.e. the next free scratch level. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scratch_depth SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FE_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/*
 * Kernel drops (sum of `drops`) the agents of this capture have reported in
 * batches so far: written by the agent, never by BPF. It lives with the
 * pinned capture, so the next agent reports only what came after, including
 * what overflowed while no agent ran.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reported_drops SEC(".maps");

/*
 * When the last sweep pass began (now_ns(); 0: none yet), written by each
 * pass. It lives with the pinned capture, so the next agent's first pass
 * knows when the sockets still open then were last seen open.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_sweep SEC(".maps");

/*
 * A field of a kernel object. `direct`: the verifier knows the pointer's type
 * (a tp_btf argument, what bpf_skc_to_tcp_sock returns), so a plain load reads
 * it; otherwise (a classic tracepoint's argument) bpf_probe_read_kernel does,
 * a helper call per field. `direct` is a constant at every call site, so only
 * one of the two is compiled in.
 */
#define FE_READ(direct, ptr, field) ((direct) ? (ptr)->field : BPF_CORE_READ(ptr, field))

static __always_inline __u64 now_ns(void)
{
	if (use_boot_clock)
		return bpf_ktime_get_boot_ns();
	return bpf_ktime_get_ns();
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		*n += 1;
}

/*
 * The per-socket state store: `slots`, then `flows`. The hash's inserts and
 * deletes take a bucket lock and an LRU list lock with interrupts off, the
 * costliest part of following a socket (docs/benchmarks.md, 2026-12-03); a
 * slot is claimed and given back with compare-and-swap instead.
 */
static __always_inline struct fe_slot *slot_of(__u64 cookie)
{
	__u32 i = cookie & slots_mask;

	return use_slots ? bpf_map_lookup_elem(&slots, &i) : NULL;
}

/*
 * Clears the busy bit of a slot this path claimed and wrote: readers that see
 * the cookie without it must see the whole state. While the bit is set, no
 * other path writes the cookie (every other write is a compare-and-swap from
 * 0 or from the bare cookie), so a plain store is enough where the CPU keeps
 * stores in order (x86); only the compiler must not move it before the
 * state's. Elsewhere (arm64), a compare-and-swap orders them.
 */
static __always_inline void slot_publish(struct fe_slot *s, __u64 cookie)
{
#if defined(__TARGET_ARCH_x86)
	asm volatile("" ::: "memory");
	*(volatile __u64 *)&s->cookie = cookie;
#else
	__sync_val_compare_and_swap(&s->cookie, cookie | FE_SLOT_BUSY, cookie);
#endif
}

/* The state of the socket with this cookie, or NULL (also while another path writes it). */
static __always_inline struct fe_sock_state *state_of(__u64 cookie)
{
	struct fe_slot *s = slot_of(cookie);

	if (s) {
		__u64 held = s->cookie;

		if (held == cookie)
			return &s->st;
		if (held == (cookie | FE_SLOT_BUSY) || !s->spilled)
			return NULL;
	}
	return bpf_map_lookup_elem(&flows, &cookie);
}

/*
 * Gives the socket this state unless it has one: 0 when it did. Two paths
 * starting one socket at once (the seeding and sock_ops) meet at the claim:
 * the one that loses finds the cookie in the slot.
 */
static __always_inline long state_insert(__u64 cookie, const struct fe_sock_state *fresh)
{
	struct fe_slot *s = slot_of(cookie);
	__u64 held;
	long err;

	if (!s)
		return bpf_map_update_elem(&flows, &cookie, fresh, BPF_NOEXIST);
	held = s->cookie;
	if ((held & ~FE_SLOT_BUSY) == cookie || (s->spilled && bpf_map_lookup_elem(&flows, &cookie)))
		return 1;
	if (!held) {
		held = __sync_val_compare_and_swap(&s->cookie, 0, cookie | FE_SLOT_BUSY);
		if (!held) {
			__builtin_memcpy(&s->st, fresh, sizeof(*fresh));
			slot_publish(s, cookie);
			return 0;
		}
		if ((held & ~FE_SLOT_BUSY) == cookie)
			return 1;
	}
	/* Counted first, so that no lookup misses the state on its way in. */
	__sync_fetch_and_add(&s->spilled, 1);
	err = bpf_map_update_elem(&flows, &cookie, fresh, BPF_NOEXIST);
	if (err)
		__sync_fetch_and_add(&s->spilled, -1);
	return err;
}

/*
 * Whose the slot is, for a reader that is not the socket's own path (the
 * sweep, the interim pass): a compare-and-swap that changes nothing, since
 * it orders the reads of the state after it on every CPU (arm64 would let a
 * plain load of the cookie pass them, and pair a new cookie with the last
 * socket's state). The socket's own paths are ordered by its lock.
 */
static __always_inline __u64 slot_owner(struct fe_slot *slot)
{
	return __sync_val_compare_and_swap(&slot->cookie, 0, 0);
}

/* The cookie of a slot whose state is whole, for a walk; 0 when free or being written. */
static __always_inline __u64 walked_slot(struct fe_slot *slot)
{
	__u64 cookie;

	/* Most slots are free: a plain read skips them without writing their line. */
	if (!slot->cookie)
		return 0;
	cookie = slot_owner(slot);
	return cookie & FE_SLOT_BUSY ? 0 : cookie;
}

/*
 * Removes the socket's state: true when this call did, so that of two paths
 * (a destroy and the sweep) only one takes it.
 */
static __always_inline bool state_delete(__u64 cookie)
{
	struct fe_slot *s = slot_of(cookie);

	if (s && (s->cookie & ~FE_SLOT_BUSY) == cookie)
		return __sync_val_compare_and_swap(&s->cookie, cookie, 0) == cookie;
	if (bpf_map_delete_elem(&flows, &cookie))
		return false;
	if (s)
		__sync_fetch_and_add(&s->spilled, -1);
	return true;
}

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = addr;
}

static __always_inline void read_endpoints(const struct sock *sk, struct fe_endpoints *ep, bool direct)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;
	__u16 family = FE_READ(direct, sk, __sk_common.skc_family);

	if (family == AF_INET) {
		map_v4(ep->local, FE_READ(direct, sk, __sk_common.skc_rcv_saddr));
		map_v4(ep->remote, FE_READ(direct, sk, __sk_common.skc_daddr));
		ep->family = FE_FAMILY_IPV4;
	} else {
		if (direct) {
			__builtin_memcpy(ep->local, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
			__builtin_memcpy(ep->remote, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		} else {
			BPF_CORE_READ_INTO(&ep->local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
			BPF_CORE_READ_INTO(&ep->remote, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		}
		/* A dual-stack socket talking IPv4 is an IPv4 flow. */
		ep->family = is_v4_mapped(ep->remote) ? FE_FAMILY_IPV4 : FE_FAMILY_IPV6;
	}
	/* Not skc_num: the kernel releases the port (zeroing it) before the CLOSE tracepoint. */
	ep->local_port = bpf_ntohs(FE_READ(direct, inet, inet_sport));
	ep->remote_port = bpf_ntohs(FE_READ(direct, sk, __sk_common.skc_dport));
}

/* Resolution order: (IPv4, port) map, IP map, host identity, unknown. */
static __always_inline __u8 resolve_workload(const struct fe_endpoints *ep, struct fe_workload *out)
{
	struct fe_workload *w = NULL;
	__u8 source = FE_ID_UNKNOWN;
	__u32 zero = 0;

	if (ep->family == FE_FAMILY_IPV4) {
		struct fe_port_key pk = { .port = bpf_htons(ep->local_port) };

		__builtin_memcpy(pk.addr, &ep->local[12], 4);
		w = bpf_map_lookup_elem(&port_workload, &pk);
		if (w)
			source = FE_ID_PORT_MAP;
	}
	if (!w) {
		w = bpf_map_lookup_elem(&ip_workload, ep->local);
		if (w)
			source = FE_ID_IP_MAP;
	}
	if (!w) {
		w = bpf_map_lookup_elem(&host_workload, &zero);
		if (w && w->id[0])
			source = FE_ID_HOST;
		else
			w = NULL;
	}
	if (w)
		__builtin_memcpy(out, w, sizeof(*out));
	else
		out->id[0] = 0;
	return source;
}

/*
 * Attributes the flow, once its local address and port are final: at
 * ESTABLISHED, or already in sock_ops's TCP_CONNECT_CB, which connect() calls
 * once it has picked the route and bound the port (the state tracepoint's
 * SYN_SENT comes before the port).
 */
static __always_inline void resolve_flow(const struct sock *sk, struct fe_sock_state *st)
{
	read_endpoints(sk, &st->ends, true);
	st->identity_source = resolve_workload(&st->ends, &st->workload);
	st->resolved = 1;
}

/*
 * Starts following a socket: its address and endpoints are kept for the
 * sweep. With `resolve` (its endpoints are final: resolve_flow()), the flow
 * is attributed too, before its state is inserted: one map operation, not an
 * insert and a lookup.
 */
static __always_inline void start_flow(const struct sock *sk, __u64 cookie, __u8 direction,
				       __u8 flags, bool resolve)
{
	struct fe_sock_state fresh = {
		.t_start_ns = now_ns(),
		.direction = direction,
		.flags = flags,
		.sk = (__u64)sk,
	};
	struct fe_sock_state *st;

	if (resolve)
		resolve_flow(sk, &fresh);
	else
		read_endpoints(sk, &fresh.ends, true);
	/* Unless it has a state: the other path, or the program being replaced, may have started it. */
	if (!state_insert(cookie, &fresh))
		return;
	st = state_of(cookie);
	if (!st)
		return;
	if (st->emitted) {
		/*
		 * Its earlier connection is closed and out: the socket connects
		 * again (after a failed connect, or connect(AF_UNSPEC)), and this
		 * connection is a new flow. Only the socket's owner, holding its
		 * lock, gets here, so nothing else writes the state meanwhile.
		 */
		fresh.connection = st->connection + 1;
		*st = fresh;
	} else if (resolve && !st->resolved) {
		resolve_flow(sk, st);
	}
}

/*
 * ESTABLISHED: attributes the flow, started at connect or (the handshake
 * began before the agent attached) now.
 */
static __always_inline void establish_flow(const struct sock *sk, __u64 cookie, __u8 direction)
{
	struct fe_sock_state *st = state_of(cookie);

	if (!st)
		start_flow(sk, cookie, direction, FE_FLAG_SEEDED, true);
	else if (!st->resolved)
		resolve_flow(sk, st);
}

static __always_inline void fill_stats(struct fe_flow *rec, const struct sock *sk, bool direct)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u32 min_rtt = FE_READ(direct, tp, rtt_min.s[0].v);
	__u64 acked = FE_READ(direct, tp, bytes_acked);
	__u64 received = FE_READ(direct, tp, bytes_received);
	unsigned long sk_flags = FE_READ(direct, sk, __sk_common.skc_flags);
	__u8 st = rec->close_state;

	/*
	 * bytes_acked and bytes_received count sequence space: take the SYN and
	 * FIN out so users get payload bytes. The active opener's SYN is acked
	 * within its count; a FIN counts once acked (sent) or once received in
	 * order (the kernel then sets SOCK_DONE).
	 */
	if (rec->direction == FE_DIR_OUTBOUND && st != TCP_SYN_SENT && acked > 0)
		acked--;
	if ((st == TCP_FIN_WAIT1 || st == TCP_FIN_WAIT2 || st == TCP_CLOSING || st == TCP_LAST_ACK) &&
	    FE_READ(direct, tp, snd_una) == FE_READ(direct, tp, write_seq) && acked > 0)
		acked--;
	if ((sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) && received > 0)
		received--;

	rec->bytes_sent = FE_READ(direct, tp, bytes_sent);
	rec->bytes_retrans = 0;
	/* Payload acked never exceeds payload sent; this also covers a FIN when the close was not seen. */
	rec->bytes_acked = acked < rec->bytes_sent ? acked : rec->bytes_sent;
	rec->bytes_received = received;
	rec->segs_out = FE_READ(direct, tp, segs_out);
	rec->segs_in = FE_READ(direct, tp, segs_in);
	rec->total_retrans = FE_READ(direct, tp, total_retrans);
	rec->srtt_us = FE_READ(direct, tp, srtt_us) >> 3; /* stored as 8 * µs */
	rec->min_rtt_us = min_rtt == ~0U ? 0 : min_rtt;
	rec->delivered = FE_READ(direct, tp, delivered);
	if (bpf_core_field_exists(tp->lost))
		rec->lost = FE_READ(direct, tp, lost);
	rec->error = FE_READ(direct, sk, sk_err);
	if (bpf_core_field_exists(tp->bytes_retrans))
		rec->bytes_retrans = FE_READ(direct, tp, bytes_retrans);
}

/*
 * Fills the fields of a record that come from the socket's endpoints and its
 * state (NULL: none), t_end_ns set already. `tcp_state` is the state the
 * socket closed from, or is in at a snapshot.
 */
static __always_inline void fill_flow(struct fe_flow *rec, __u64 cookie,
				      const struct fe_sock_state *st, const struct fe_endpoints *ep,
				      int tcp_state, __u8 flags)
{
	rec->cookie = st ? cookie | (__u64)st->connection << FE_CONNECTION_SHIFT : cookie;
	rec->close_state = tcp_state;
	rec->family = ep->family;
	rec->local_port = ep->local_port;
	rec->remote_port = ep->remote_port;
	__builtin_memcpy(rec->local_ip, ep->local, 16);
	__builtin_memcpy(rec->remote_ip, ep->remote, 16);
	rec->_pad0 = 0;
	__builtin_memset(rec->_pad1, 0, sizeof(rec->_pad1));
	rec->lost = 0;

	if (st) {
		rec->t_start_ns = st->t_start_ns;
		rec->direction = st->direction;
		rec->flags = st->flags | flags;
	} else {
		/* Open before the agent and not seeded (another netns, or evicted). */
		rec->t_start_ns = rec->t_end_ns;
		rec->direction = tcp_state == TCP_SYN_SENT ? FE_DIR_OUTBOUND : FE_DIR_UNKNOWN;
		rec->flags = FE_FLAG_SEEDED | flags;
	}
	if (st && st->resolved) {
		rec->identity_source = st->identity_source;
		__builtin_memcpy(rec->workload_id, st->workload.id, FE_WORKLOAD_ID_LEN);
	} else {
		/* Never established (failed connect, or a handshake under way): attribute now. */
		rec->identity_source = resolve_workload(ep, (struct fe_workload *)rec->workload_id);
	}
}

/*
 * Fills a record of the socket from its endpoints, its state (NULL: none)
 * and its counters now: the fields a close record and an interim record
 * share.
 */
static __always_inline void fill_record(struct fe_flow *rec, const struct sock *sk, __u64 cookie,
					const struct fe_sock_state *st, int tcp_state, __u8 flags,
					bool direct)
{
	struct fe_endpoints ep = {};

	read_endpoints(sk, &ep, direct);
	rec->t_end_ns = now_ns();
	fill_flow(rec, cookie, st, &ep, tcp_state, flags);
	fill_stats(rec, sk, direct);
}

/*
 * Hands a record to the ring buffer. The reader is woken when this record
 * takes the data waiting across a multiple of wakeup_bytes, not for every
 * record past it: the data waits until the agent commits it, and each forced
 * wakeup is an interrupt (a self-IPI; on a VM guest, an exit). A crossing
 * missed in a race with another CPU is caught at the next one, or by the
 * reader's timer.
 */
static __always_inline void submit_record(struct fe_flow *rec)
{
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 before = waiting - FE_RING_SPAN(sizeof(*rec));
	bool crossed = waiting >= FE_RING_SPAN(sizeof(*rec)) &&
		       waiting / wakeup_bytes != before / wakeup_bytes;

	bpf_ringbuf_submit(rec, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/*
 * Emits the record of a closing socket, once: the first path to see the
 * close emits and marks the state; later ones (the tracepoint after
 * sock_ops, an overlapping program during an upgrade, destroy) find the mark.
 * A socket without state (open before the agent, not seeded) gets a state
 * that holds only the mark. The state itself goes at destroy.
 */
static __always_inline void emit_flow(void *ctx, const struct sock *sk, __u64 cookie, int oldstate,
				      __u8 path_flags, bool direct)
{
	struct fe_sock_state *st = state_of(cookie);
	struct fe_flow *rec;
	__u32 *depth = NULL;
	__u32 zero = 0, level;

	if (st && st->emitted)
		return;
	if (use_ringbuf) {
		rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	} else {
		depth = bpf_map_lookup_elem(&scratch_depth, &zero);
		if (!depth)
			goto mark;
		level = (*depth)++;
		rec = level < SCRATCH_LEVELS ? bpf_map_lookup_elem(&scratch, &level) : NULL;
	}
	if (!rec) {
		count_drop(FE_DROP_OUTPUT);
		goto release;
	}

	fill_record(rec, sk, cookie, st, oldstate, path_flags, direct);

	if (use_ringbuf)
		submit_record(rec);
	else if (bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, rec, sizeof(*rec)))
		count_drop(FE_DROP_OUTPUT);
release:
	if (depth)
		(*depth)--;
mark:
	if (st) {
		st->emitted = 1;
	} else {
		struct fe_sock_state mark = { .emitted = 1, .sk = (__u64)sk };

		state_insert(cookie, &mark);
	}
}

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate, int newstate)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);

	switch (newstate) {
	case TCP_SYN_SENT:
		start_flow(sk, cookie, FE_DIR_OUTBOUND, 0, false);
		break;
	case TCP_SYN_RECV:
		start_flow(sk, cookie, FE_DIR_INBOUND, 0, false);
		break;
	case TCP_ESTABLISHED:
		establish_flow(sk, cookie,
			       oldstate == TCP_SYN_SENT ? FE_DIR_OUTBOUND : FE_DIR_INBOUND);
		break;
	case TCP_CLOSE:
		/* Listening sockets are not flows. */
		if (oldstate != TCP_LISTEN)
			emit_flow(ctx, sk, cookie, oldstate, 0, true);
		break;
	}
	return 0;
}

/* With sock_ops attached, it starts every flow: the tracepoint only catches closes it missed. */
static __always_inline bool wanted_state(int newstate)
{
	if (sockops_attached)
		return newstate == TCP_CLOSE;
	return newstate == TCP_SYN_SENT || newstate == TCP_SYN_RECV ||
	       newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	struct tcp_sock *tp;

	if (!wanted_state(newstate))
		return 0;
	/* NULL for other protocols; else a pointer typed tcp_sock, whose fields read directly. */
	tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		return 0;
	return handle_state(ctx, (const struct sock *)tp, oldstate, newstate);
}

/*
 * A socket destroyed whose state has no record out closed without any
 * program seeing it: the kernel skips a tracing program that would nest on a
 * CPU (recursion_misses). Emit its record now (close state unknown). This is
 * also the one place where a socket's state is deleted. Both destroy programs
 * may run for one socket: the first emits and deletes, the second finds
 * nothing. The cookie is read, not assigned: a socket without one was never
 * followed, except as below.
 *
 * `unfollowed_too` (on_destroy_btf, once the state tracepoint is detached):
 * a socket without state whose state callbacks nobody asked for, and that
 * had a connection, is one nobody followed, open since before the capture,
 * whose close no program saw. The shim detaches the tracepoint only when no
 * such socket has a file, so it is, as a rule, an orphan (its owner closed it
 * already: its close and its destroy are one moment) of a network namespace
 * the seeding could not reach. It is recorded here, its cookie assigned if it
 * had none; the mark emit_flow leaves goes at once, since the classic program
 * may have run already.
 */
static __always_inline int handle_destroy(void *ctx, const struct sock *sk, bool direct,
					  bool unfollowed_too)
{
	__u64 cookie = FE_READ(direct, sk, __sk_common.skc_cookie.counter);
	struct fe_sock_state *st = NULL;

	if (cookie)
		st = state_of(cookie);
	if (!st) {
		/*
		 * A socket sock_ops follows had its close recorded (the state may be
		 * gone: the other destroy program ran first). A listener, or a socket
		 * that never connected, has no remote port.
		 */
		if (!unfollowed_too ||
		    FE_READ(direct, (const struct tcp_sock *)sk, bpf_sock_ops_cb_flags) &
			    BPF_SOCK_OPS_STATE_CB_FLAG ||
		    !FE_READ(direct, sk, __sk_common.skc_dport))
			return 0;
		if (!cookie)
			cookie = bpf_get_socket_cookie((void *)sk);
		__sync_fetch_and_add(&unfollowed_at_destroy, 1);
	} else if (st->emitted) {
		goto forget;
	}
	emit_flow(ctx, sk, cookie, FE_STATE_UNKNOWN, 0, direct);
forget:
	state_delete(cookie);
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy_btf, const struct sock *sk)
{
	/* Typed tcp_sock, for the direct reads of emit_flow (the argument is typed sock). */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

	return tp ? handle_destroy(ctx, (const struct sock *)tp, true, state_tracepoint_detached) : 0;
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int on_destroy_tp(struct trace_event_raw_tcp_event_sk *args)
{
	/* Its socket pointer is untyped: it cannot assign a cookie, so it records followed sockets only. */
	return handle_destroy(args, BPF_CORE_READ(args, skaddr), false, false);
}

/* Asks for the socket's state callbacks, its close among them; a helper call only when not asked yet. */
static __always_inline void follow_state_changes(struct bpf_sock_ops *skops)
{
	__u32 flags = skops->bpf_sock_ops_cb_flags;

	if (!(flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		bpf_sock_ops_cb_flags_set(skops, flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/*
 * The primary path. sock_ops runs for sockets of processes in the cgroup it
 * is attached to (the v2 root: all of them), and the kernel never skips it.
 * It follows a socket from connect() (so a failed connect is covered) or
 * from the accepted handshake, and asks for its state changes; the close
 * arrives in BPF_SOCK_OPS_STATE_CB, before the tracepoint sees it.
 */
SEC("sockops")
int on_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	__u64 cookie;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] != BPF_TCP_CLOSE)
		return 1;
	/*
	 * A connection whose state callbacks were asked for already (at its
	 * connect, or by the seeding) was attributed then: nothing to do at
	 * ESTABLISHED. (Started by an earlier agent's program, which attributed
	 * at ESTABLISHED, it is attributed at its close.)
	 */
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    (skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		return 1;
	bsk = skops->sk;
	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	cookie = bpf_get_socket_cookie(skops);

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		start_flow((const struct sock *)tp, cookie, FE_DIR_OUTBOUND, 0, true);
		follow_state_changes(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* Its connect came before the attach. */
		establish_flow((const struct sock *)tp, cookie, FE_DIR_OUTBOUND);
		follow_state_changes(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* The accepted socket was born in this handshake: never seeded. */
		start_flow((const struct sock *)tp, cookie, FE_DIR_INBOUND, 0, true);
		follow_state_changes(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[0] != BPF_TCP_LISTEN)
			emit_flow(skops, (const struct sock *)tp, cookie, skops->args[0],
				  FE_FLAG_SOCKOPS, true);
		break;
	}
	return 1;
}

/* A state of a connection not yet closed: not LISTEN, TIME_WAIT, NEW_SYN_RECV or CLOSE. */
static __always_inline bool is_connection_state(__u8 state)
{
	return state != TCP_LISTEN && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV &&
	       state != TCP_CLOSE;
}

/*
 * The full TCP socket behind an iterator's entry, when it has a connection
 * not yet closed (is_connection_state()); its state in *state.
 */
static __always_inline struct tcp_sock *open_tcp_sock(struct sock_common *skc, __u8 *state)
{
	if (!skc)
		return NULL;
	*state = skc->skc_state;
	if (!is_connection_state(*state))
		return NULL;
	return bpf_skc_to_tcp_sock(skc);
}

/* Seeds sockets that were open before the agent attached (agent's netns). */
SEC("iter/tcp")
int seed_flows(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct fe_sock_state st = {};
	struct tcp_sock *tp;
	__u64 cookie;
	__u8 state;

	tp = open_tcp_sock(skc, &state);
	if (!tp)
		return 0;

	cookie = bpf_get_socket_cookie(skc);
	st.t_start_ns = now_ns();
	st.flags = FE_FLAG_SEEDED;
	st.direction = state == TCP_SYN_SENT ? FE_DIR_OUTBOUND : FE_DIR_UNKNOWN;
	st.sk = (__u64)tp;
	/* A socket in SYN_SENT is in the table, so its port is bound: only SYN_RECV waits. */
	if (state != TCP_SYN_RECV)
		resolve_flow((const struct sock *)tp, &st);
	else
		read_endpoints((const struct sock *)tp, &st.ends, true);
	/* Unless it has a state: the tracepoint may already have seen this socket. */
	if (!state_insert(cookie, &st))
		__sync_fetch_and_add(&seeded, 1);
	if (follow_seeded) {
		/* The iterator holds the socket's lock, as bpf_setsockopt() requires. */
		int cb_flags = tp->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG;

		if (bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &cb_flags, sizeof(cb_flags)))
			__sync_fetch_and_add(&seeded_unfollowed, 1);
	}
	return 0;
}

/*
 * Counts the TCP sockets with a connection not yet closed that have a file,
 * in every network namespace, whose state callbacks nobody asked for: the
 * closes only the state tracepoint would see. A socket several descriptors
 * share counts once for each; only zero matters.
 */
SEC("iter/task_file")
int count_unfollowed(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct socket *sock;
	struct sock *sk;

	if (!file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	/*
	 * A pointer walked from the file, which bpf_skc_to_tcp_sock() does not
	 * take: the socket is told TCP by its protocol, and the flags are read.
	 */
	sk = sock->sk;
	if (!sk || sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return 0;
	if (!is_connection_state(sk->__sk_common.skc_state))
		return 0;
	if (!(BPF_CORE_READ((struct tcp_sock *)sk, bpf_sock_ops_cb_flags) &
	      BPF_SOCK_OPS_STATE_CB_FLAG))
		__sync_fetch_and_add(&unfollowed, 1);
	return 0;
}

/*
 * The counters of a record whose socket could not be read: unknown, so zero.
 * They are two runs of the layout (bytes_sent up to the cookie, segs_out up
 * to the padding after lost) and the error.
 */
static __always_inline void clear_stats(struct fe_flow *rec)
{
	__builtin_memset(&rec->bytes_sent, 0,
			 __builtin_offsetof(struct fe_flow, cookie) -
				 __builtin_offsetof(struct fe_flow, bytes_sent));
	__builtin_memset(&rec->segs_out, 0,
			 __builtin_offsetof(struct fe_flow, _pad0) -
				 __builtin_offsetof(struct fe_flow, segs_out));
	rec->error = 0;
}

static __always_inline __u64 cookie_at(const struct sock *sk)
{
	/* A faulting read gives 0, which no socket that has a state holds. */
	return BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
}

/* A map iterator's map is `flows` (found by the ID the shim set). */
static __always_inline bool is_flows(const struct bpf_map *map)
{
	return map && map->id == flows_map_id;
}

/*
 * The sweep: a state whose record is not out, whose socket is gone, had its
 * close and destroy skipped by the kernel (no program ran for them). The
 * socket is gone when its address no longer holds its cookie (freed, and
 * perhaps another socket's now: a new socket's cookie is 0 or its own), or
 * holds it in TCP_CLOSE: a close's programs mark `emitted` before the kernel
 * stores the state, so TCP_CLOSE without the mark is a close no program saw.
 *
 * Its record (FE_FLAG_SWEPT, close state unknown) ends when the socket was
 * last seen open: the previous pass (last_sweep, of this agent or the one
 * before), which found it open, or its start if later. The counters are read
 * when the address still holds the socket (checked again after reading
 * them), else left zero. The state goes: the delete is the claim, so that a
 * destroy running now emits instead, not as well. A socket still there keeps
 * a mark for its destroy to delete.
 *
 * A state whose record is out and whose socket is freed lost its destroy: it
 * is deleted too. Nothing else deletes it in an LRU map that stays under its
 * size.
 */
static __always_inline void sweep_state(__u64 cookie, struct fe_sock_state *st,
					__u64 seen_open_ns)
{
	struct fe_sock_state copy;
	const struct sock *sk;
	struct fe_flow *rec;
	bool intact;

	if (!st->sk)
		return;
	sk = (const struct sock *)st->sk;
	intact = cookie_at(sk) == cookie;
	if (intact && BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_CLOSE)
		return;
	/* Copied after the socket was read: see the mark above. */
	__builtin_memcpy(&copy, st, sizeof(copy));
	if (copy.emitted) {
		if (!intact && state_delete(cookie))
			__sync_fetch_and_add(&swept_stale, 1);
		return;
	}
	/* The ring is full: the state stays for the next pass. */
	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec)
		return;
	if (!state_delete(cookie)) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return;
	}
	if (intact && !copy.resolved)
		read_endpoints(sk, &copy.ends, false);
	rec->t_end_ns = copy.t_start_ns > seen_open_ns ? copy.t_start_ns : seen_open_ns;
	fill_flow(rec, cookie, &copy, &copy.ends, FE_STATE_UNKNOWN, FE_FLAG_SWEPT);
	if (intact)
		fill_stats(rec, sk, false);
	if (!intact || cookie_at(sk) != cookie)
		clear_stats(rec);
	submit_record(rec);
	__sync_fetch_and_add(&swept, 1);
	if (intact) {
		struct fe_sock_state mark = {
			.emitted = 1,
			.connection = copy.connection,
			.sk = copy.sk,
		};

		state_insert(cookie, &mark);
	}
}

static long sweep_flow(struct bpf_map *map, const __u64 *key, struct fe_sock_state *st,
		       const __u64 *seen_open_ns)
{
	sweep_state(*key, st, *seen_open_ns);
	return 0;
}

/* A slot being claimed is skipped: its socket is just starting. */
static long sweep_slot(struct bpf_map *map, const __u32 *index, struct fe_slot *slot,
		       const __u64 *seen_open_ns)
{
	__u64 cookie = walked_slot(slot);

	if (cookie)
		sweep_state(cookie, &slot->st, *seen_open_ns);
	return 0;
}

/*
 * A walk over every map that stops at `flows` (a map element iterator would
 * walk it alone, but some kernels' policies refuse to load one).
 */
SEC("iter/bpf_map")
int sweep_flows(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;
	__u64 *last, seen_open_ns;
	__u32 zero = 0;

	if (!is_flows(map))
		return 0;
	last = bpf_map_lookup_elem(&last_sweep, &zero);
	if (!last)
		return 0;
	seen_open_ns = *last;
	*last = now_ns();
	if (use_slots)
		bpf_for_each_map_elem(&slots, sweep_slot, &seen_open_ns, 0);
	bpf_for_each_map_elem(&flows, sweep_flow, &seen_open_ns, 0);
	return 0;
}

/*
 * A run's records, which the shim copies out (batch lookups: mapped, the
 * whole array would count in the agent's resident memory). Each run walks
 * again the states the runs before it visited, so a pass over n states
 * costs about n / max_entries walks of half the map: with 16384 records
 * (4.3 MiB of kernel memory) a pass over 200 000 sockets costs 1.3 to 1.5
 * times the TCP iterator's, one over 20 000 the same (docs/benchmarks.md).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct fe_flow);
} snapshot_out SEC(".maps");

struct snapshot_run {
	__u64 now;
	__u32 written;
	bool first;
	bool more;
};

/*
 * One state's interim record; 1 ends the walk. `owner`: the state's slot,
 * whose cookie is read again at the end (the slot may have gone to another
 * socket), or NULL for a state in `flows`.
 */
static __always_inline long snapshot_state(__u64 cookie, struct fe_sock_state *st,
					   struct fe_slot *owner, struct snapshot_run *run)
{
	const struct sock *sk;
	struct fe_flow *rec;
	__u32 i = run->written;
	__u8 state;

	if (!run->first && st->snapshot_mark)
		return 0;
	/* NULL once snapshot_out is full: this state and those after it are the next run's. */
	rec = bpf_map_lookup_elem(&snapshot_out, &i);
	if (!rec) {
		run->more = true;
		if (!run->first)
			return 1;
		st->snapshot_mark = 0;
		return 0;
	}
	st->snapshot_mark = 1;
	if (st->emitted || !st->sk || run->now < st->t_start_ns ||
	    run->now - st->t_start_ns < snapshot_min_age_ns)
		return 0;
	sk = (const struct sock *)st->sk;
	if (cookie_at(sk) != cookie)
		return 0;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (!is_connection_state(state))
		return 0;
	fill_record(rec, sk, cookie, st, state, FE_FLAG_INTERIM, false);
	/* The address now holds another socket: what was read is not all this one's. */
	if (cookie_at(sk) != cookie || (owner && slot_owner(owner) != cookie))
		return 0;
	run->written = i + 1;
	return 0;
}

static long snapshot_flow(struct bpf_map *map, const __u64 *key, struct fe_sock_state *st,
			  struct snapshot_run *run)
{
	return snapshot_state(*key, st, NULL, run);
}

static long snapshot_slot(struct bpf_map *map, const __u32 *index, struct fe_slot *slot,
			  struct snapshot_run *run)
{
	__u64 cookie = walked_slot(slot);

	return cookie ? snapshot_state(cookie, &slot->st, slot, run) : 0;
}

/*
 * Interim records (FE_FLAG_INTERIM), one per open socket the capture tracks:
 * a state (in `slots` or `flows`) whose record is not out, whose socket
 * still holds its cookie in a connection state, and that is at least snapshot_min_age_ns
 * old. Every network namespace's sockets are covered, as at close.
 *
 * A pass walks `slots` and `flows`, reading each socket through the address its state
 * keeps, as the sweep does; not the TCP sockets: the kernel's TCP socket
 * iterator takes a reference on a connection request still being set up
 * on most kernels (CVE-2026-74714, docs/operations.md), and a pass runs at
 * every window's end.
 *
 * A run writes records into snapshot_out until it is full; the shim copies
 * them out and runs the iterator again (snapshot_more) until a run finds no
 * state left. A run marks each state it visits (snapshot_mark) and
 * skips those marked, so no socket gets two records in a pass. The first run
 * of a pass walks every state: it marks those it visits before snapshot_out
 * fills and clears the marks after, which an earlier pass, perhaps an
 * earlier agent's that stopped halfway, may have left.
 */
SEC("iter/bpf_map")
int snapshot_flows(struct bpf_iter__bpf_map *ctx)
{
	struct snapshot_run run = { .now = now_ns(), .first = snapshot_first };
	struct bpf_map *map = ctx->map;

	if (!is_flows(map))
		return 0;
	if (use_slots)
		bpf_for_each_map_elem(&slots, snapshot_slot, &run, 0);
	bpf_for_each_map_elem(&flows, snapshot_flow, &run, 0);
	snapshot_written = run.written;
	snapshot_more = run.more;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
