// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The native boundary of flowexporter: loads the BPF skeleton, attaches it,
 * and hands closed-flow records (and, on request, interim records of open
 * sockets: fe_snapshot_*) to the caller's buffer in bulk. A small C
 * ABI for Deno.dlopen (ffi/symbols.ts mirrors it): every function returns
 * 0 (or a count) on success and -errno on failure; nothing calls back into
 * JavaScript.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#include "flowexporter.h"
#include "flowexporter.skel.h"

#define FE_API __attribute__((visibility("default")))

/* Bump when a signature below or an FE_STAT_* index changes. */
#define FE_ABI_VERSION 9

/*
 * The record layout lib/decode.ts reads. A change here fails the build until
 * FE_FLOW_VERSION and the decoder's table move with it (tests/decode_test.ts
 * compares that table with fe_record_offsets()).
 */
#define FE_FLOW_FIELDS(X)                                                                  \
	X(t_start_ns, 0) X(t_end_ns, 8) X(bytes_sent, 16) X(bytes_acked, 24)               \
	X(bytes_received, 32) X(bytes_retrans, 40) X(cookie, 48) X(segs_out, 56)            \
	X(segs_in, 60) X(total_retrans, 64) X(srtt_us, 68) X(min_rtt_us, 72)                \
	X(delivered, 76) X(lost, 80) X(local_ip, 88) X(remote_ip, 104) X(local_port, 120)   \
	X(remote_port, 122) X(family, 124) X(direction, 125) X(close_state, 126)            \
	X(identity_source, 127) X(flags, 128) X(error, 129) X(workload_id, 136)
#define FE_ASSERT_OFFSET(field, at)                                                       \
	_Static_assert(offsetof(struct fe_flow, field) == (at),                           \
		       "struct fe_flow." #field " moved: bump FE_FLOW_VERSION, update lib/decode.ts");
FE_FLOW_FIELDS(FE_ASSERT_OFFSET)
_Static_assert(sizeof(struct fe_flow) == 264,
	       "struct fe_flow changed: bump FE_FLOW_VERSION and update lib/decode.ts");
_Static_assert(FE_FLOW_VERSION == 4, "update lib/decode.ts with the record version");
_Static_assert(sizeof(struct fe_port_key) == 8, "struct fe_port_key is a pinned-map contract");
_Static_assert(sizeof(struct fe_sock_state) == 192,
	       "struct fe_sock_state is a pinned-map contract: bump FE_STATE_VERSION");
_Static_assert(sizeof(struct fe_slot) == 16 + sizeof(struct fe_sock_state),
	       "struct fe_slot is a pinned-map contract: bump FE_STATE_VERSION");
_Static_assert(sizeof(struct fe_workload) == FE_WORKLOAD_ID_LEN,
	       "struct fe_workload is a pinned-map contract");

/* fe_open() options */
#define FE_OPT_PERF_BUFFER (1u << 0)	   /* perf buffer even where a ring buffer works */
#define FE_OPT_NO_PIN (1u << 1)	   /* nothing pinned: the capture ends with the handle */
#define FE_OPT_NO_SEED (1u << 2)	   /* do not seed already-open sockets */
#define FE_OPT_VERBOSE (1u << 3)	   /* keep libbpf debug output in the log */

/* fe_stats() indices */
enum fe_stat {
	FE_STAT_KERNEL_DROPS,	  /* records the BPF side could not hand over */
	FE_STAT_RECURSION_MISSES, /* program runs the kernel skipped (nested on a CPU) */
	FE_STAT_PERF_LOST,	  /* records the perf buffer reported lost */
	FE_STAT_FLOWS_MAX,	  /* capacity of the per-socket state map */
	FE_STAT_TRANSPORT,	  /* 0 ring buffer, 1 perf buffer */
	FE_STAT_SOCKOPS,	  /* 1 when sock_ops follows sockets (the primary path) */
	FE_STAT_CLOCK,		  /* 0 CLOCK_BOOTTIME, 1 CLOCK_MONOTONIC */
	FE_STAT_SEEDED,		  /* sockets seeded at start, or -1: none (no iterator, no_seed, resumed) */
	FE_STAT_RESUMED,	  /* 1 when a pinned capture was taken over (restart or upgrade) */
	FE_STAT_RING_ID,	  /* kernel ID of the ring buffer map (0: perf buffer) */
	FE_STAT_RING_CONSUMED,	  /* ring position committed as consumed */
	FE_STAT_RING_PRODUCED,	  /* ring position the kernel has written up to */
	FE_STAT_RING_WAITING,	  /* records past the consumed position: the next reader's */
	FE_STAT_STATE_TRACEPOINT, /* 1 while the state tracepoint is attached (closes sock_ops misses) */
	FE_STAT_UNFOLLOWED,	  /* open sockets sock_ops does not follow at the last check, or -1 */
	FE_STAT_UNFOLLOWED_AT_DESTROY, /* sockets nobody followed, recorded at their destroy */
	FE_STAT_SWEPT,		  /* sockets whose close no program saw, recorded by the sweep */
	FE_STAT_SWEPT_STALE,	  /* states of freed sockets whose destroy no program saw, deleted */
	FE_STAT_COUNT,
};

/* Errors that are not an errno: the caller's buffer filled up mid-drain. */
#define FE_BUFFER_FULL (-ENOBUFS)

/* Pinned programs' links in the capture directory, and the maps pinned beside them. */
#define FE_LINK_SOCKOPS "link_sockops"
#define FE_LINK_STATE "link_state"
#define FE_LINK_DESTROY_BTF "link_destroy_btf"
#define FE_LINK_DESTROY_TP "link_destroy_tp"

/*
 * The ring buffer, read by hand rather than through libbpf's ring_buffer:
 * a record is consumed (its space given back to the kernel) only when the
 * caller commits it, after it is safe in the journal, so a crash between
 * reading and journaling loses nothing. Layout: the kernel's consumer page
 * (read-write), then the producer page and the data pages mapped twice so
 * that a record never wraps.
 */
struct fe_ring {
	int epoll_fd;
	uint64_t *consumer;
	const uint64_t *producer;
	const uint8_t *data;
	size_t size;	     /* data bytes, a power of two */
	size_t page;
	uint64_t read_pos;   /* read up to here; the consumer lags until a commit */
	uint32_t map_id;
};

/*
 * A snapshot pass (fe_snapshot_begin .. fe_snapshot_read returning 0): runs
 * of snapshot_flows, each of which leaves up to snapshot_out's size records
 * there (how many: snapshot_written in the program's globals, with
 * snapshot_more when another run is due) for fe_snapshot_read() to copy out.
 */
struct fe_snapshot {
	uint32_t next; /* the first record of the last run not yet copied */
	bool running;
};

struct fe_agent {
	struct flowexporter_bpf *skel;
	struct fe_ring ring;
	struct fe_snapshot snapshot;
	struct perf_buffer *pb;
	/* Destination of the current fe_poll(). */
	uint8_t *dst;
	uint32_t cap;
	uint32_t len;
	/* Perf samples that arrived after dst filled up (perf cannot stop mid-drain). */
	uint8_t *spill;
	size_t spill_len;
	size_t spill_cap;
	uint64_t perf_lost;
	int64_t seeded;
	/* Open sockets with a file that sock_ops does not follow, at the last check; -1: no check. */
	int64_t unfollowed;
	/* The capture directory when the links are pinned; "" otherwise. */
	char capdir[PATH_MAX];
	bool boot_clock;
	bool sockops;
	bool resumed;
	/*
	 * The seeding asks for the seeded sockets' sock_ops callbacks (this agent's seeding, or its
	 * resumed capture's first agent's).
	 */
	bool follow_seeded;
};

/* The last part of libbpf's log (the verifier's last lines matter most). */
static char log_buf[16384];
static size_t log_len;
static bool log_verbose;
/* The step that failed and the kernel's reason: "attach sock_ops to /sys/fs/cgroup: ...". */
static char error_buf[512];

static int on_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char line[1024];
	int n;

	if (level == LIBBPF_DEBUG && !log_verbose)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, args);
	if (n <= 0)
		return 0;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (log_len + n >= sizeof(log_buf)) {
		/* Keep the newest half: the end of a verifier log explains the failure. */
		size_t keep = sizeof(log_buf) / 2;

		if (keep > log_len)
			keep = log_len;
		memmove(log_buf, log_buf + log_len - keep, keep);
		log_len = keep;
		if (log_len + n >= sizeof(log_buf))
			log_len = 0;
	}
	memcpy(log_buf + log_len, line, n);
	log_len += n;
	log_buf[log_len] = 0;
	return 0;
}

/* Records which step failed and why; returns err (a -errno) for `return fail(...)`. */
__attribute__((format(printf, 2, 3))) static int fail(int err, const char *fmt, ...)
{
	size_t n;
	va_list args;

	va_start(args, fmt);
	vsnprintf(error_buf, sizeof(error_buf), fmt, args);
	va_end(args);
	n = strlen(error_buf);
	snprintf(error_buf + n, sizeof(error_buf) - n, ": %s", strerror(err < 0 ? -err : err));
	return err < 0 ? err : -err;
}

FE_API uint32_t fe_abi_version(void)
{
	return FE_ABI_VERSION;
}

FE_API uint32_t fe_record_size(void)
{
	return sizeof(struct fe_flow);
}

FE_API uint32_t fe_record_version(void)
{
	return FE_FLOW_VERSION;
}

FE_API uint32_t fe_state_version(void)
{
	return FE_STATE_VERSION;
}

/* The record's field offsets, in FE_FLOW_FIELDS order; returns how many it wrote. */
FE_API int fe_record_offsets(uint32_t *out, uint32_t n)
{
#define FE_OFFSET_ENTRY(field, at) offsetof(struct fe_flow, field),
	static const uint32_t offsets[] = { FE_FLOW_FIELDS(FE_OFFSET_ENTRY) };
	uint32_t count = sizeof(offsets) / sizeof(offsets[0]);

	if (n > count)
		n = count;
	memcpy(out, offsets, n * sizeof(*out));
	return (int)n;
}

/* Copies the collected libbpf log into buf (NUL-terminated); returns its length. */
FE_API int fe_log_read(char *buf, uint32_t cap)
{
	size_t n = log_len;

	if (!cap)
		return 0;
	if (n >= cap)
		n = cap - 1;
	memcpy(buf, log_buf + log_len - n, n);
	buf[n] = 0;
	return (int)n;
}

/* Copies the failed step's message ("" when none) into buf; returns its length. */
FE_API int fe_error_read(char *buf, uint32_t cap)
{
	size_t n = strlen(error_buf);

	if (!cap)
		return 0;
	if (n >= cap)
		n = cap - 1;
	memcpy(buf, error_buf, n);
	buf[n] = 0;
	return (int)n;
}

static int spill_record(struct fe_agent *a, const void *rec)
{
	if (a->spill_len + sizeof(struct fe_flow) > a->spill_cap) {
		size_t cap = a->spill_cap ? a->spill_cap * 2 : 64 * sizeof(struct fe_flow);
		uint8_t *p = realloc(a->spill, cap);

		if (!p)
			return -ENOMEM;
		a->spill = p;
		a->spill_cap = cap;
	}
	memcpy(a->spill + a->spill_len, rec, sizeof(struct fe_flow));
	a->spill_len += sizeof(struct fe_flow);
	return 0;
}

struct perf_sample {
	struct perf_event_header header;
	uint32_t size;
	uint8_t data[];
};

struct perf_lost {
	struct perf_event_header header;
	uint64_t id;
	uint64_t lost;
};

static enum bpf_perf_event_ret on_perf_event(void *ctx, int cpu, struct perf_event_header *event)
{
	struct fe_agent *a = ctx;

	(void)cpu;
	if (event->type == PERF_RECORD_LOST) {
		a->perf_lost += ((struct perf_lost *)event)->lost;
	} else if (event->type == PERF_RECORD_SAMPLE) {
		struct perf_sample *s = (struct perf_sample *)event;

		if (s->size < sizeof(struct fe_flow))
			return LIBBPF_PERF_EVENT_CONT;
		if (a->len + sizeof(struct fe_flow) <= a->cap) {
			memcpy(a->dst + a->len, s->data, sizeof(struct fe_flow));
			a->len += sizeof(struct fe_flow);
		} else if (spill_record(a, s->data)) {
			a->perf_lost++;
		}
	}
	return LIBBPF_PERF_EVENT_CONT;
}

static bool kernel_has_type(const struct btf *vmlinux, const char *name, int kind)
{
	return vmlinux && btf__find_by_name_kind(vmlinux, name, kind) > 0;
}

/* An enumerator `value` of the enum type t. */
static bool enum_has_value(const struct btf *vmlinux, const struct btf_type *t, const char *value)
{
	const struct btf_enum *e = btf_enum(t);
	int i;

	for (i = 0; i < btf_vlen(t); i++, e++)
		if (!strcmp(btf__name_by_offset(vmlinux, e->name_off), value))
			return true;
	return false;
}

/*
 * An enumerator `value` of the enum `enum_name` in the kernel's BTF, or with
 * enum_name NULL of any anonymous enum (where the UAPI's constants are).
 */
static bool kernel_has_enum_value(const struct btf *vmlinux, const char *enum_name,
				  const char *value)
{
	int id, n;

	if (!vmlinux)
		return false;
	if (enum_name) {
		id = btf__find_by_name_kind(vmlinux, enum_name, BTF_KIND_ENUM);
		return id > 0 && enum_has_value(vmlinux, btf__type_by_id(vmlinux, id), value);
	}
	for (id = 1, n = btf__type_cnt(vmlinux); id < n; id++) {
		const struct btf_type *t = btf__type_by_id(vmlinux, id);

		if (btf_is_enum(t) && !t->name_off && enum_has_value(vmlinux, t, value))
			return true;
	}
	return false;
}

/* fe_probe() bits: what this kernel offers the agent. doctor asks the same question. */
#define FE_PROBE_BTF (1u << 0)	    /* kernel BTF (required) */
#define FE_PROBE_TP_BTF (1u << 1)   /* BTF-typed inet_sock_set_state (required) */
#define FE_PROBE_RINGBUF (1u << 2)  /* BPF ring buffer (else the perf buffer) */
#define FE_PROBE_BOOT_NS (1u << 3)  /* bpf_ktime_get_boot_ns (else CLOCK_MONOTONIC) */
#define FE_PROBE_ITER_TCP (1u << 4) /* TCP socket iterator: seeding */
#define FE_PROBE_SOCKOPS (1u << 5)  /* sock_ops programs */
/*
 * A TCP iterator may ask for a socket's sock_ops callbacks
 * (TCP_BPF_SOCK_OPS_CB_FLAGS, 6.13), and a task file iterator can count the
 * sockets nobody asked them for (bpf_sock_from_file, 5.11).
 */
#define FE_PROBE_SOCKOPS_FOLLOW (1u << 6)
/* A map iterator may walk a map (bpf_for_each_map_elem, 5.13): the sweep and interim records. */
#define FE_PROBE_MAP_WALK (1u << 7)

static uint32_t probe(const struct btf *vmlinux)
{
	uint32_t p = 0;

	if (!vmlinux)
		return 0;
	p |= FE_PROBE_BTF;
	if (kernel_has_type(vmlinux, "btf_trace_inet_sock_set_state", BTF_KIND_TYPEDEF))
		p |= FE_PROBE_TP_BTF;
	if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, NULL) == 1)
		p |= FE_PROBE_RINGBUF;
	if (kernel_has_enum_value(vmlinux, "bpf_func_id", "BPF_FUNC_ktime_get_boot_ns"))
		p |= FE_PROBE_BOOT_NS;
	if (kernel_has_type(vmlinux, "bpf_iter__tcp", BTF_KIND_STRUCT))
		p |= FE_PROBE_ITER_TCP;
	if (libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SOCK_OPS, NULL) == 1 &&
	    kernel_has_enum_value(vmlinux, "bpf_func_id", "BPF_FUNC_skc_to_tcp_sock"))
		p |= FE_PROBE_SOCKOPS;
	if ((p & FE_PROBE_SOCKOPS) && (p & FE_PROBE_ITER_TCP) &&
	    kernel_has_enum_value(vmlinux, NULL, "TCP_BPF_SOCK_OPS_CB_FLAGS") &&
	    kernel_has_type(vmlinux, "bpf_iter__task_file", BTF_KIND_STRUCT) &&
	    kernel_has_enum_value(vmlinux, "bpf_func_id", "BPF_FUNC_sock_from_file"))
		p |= FE_PROBE_SOCKOPS_FOLLOW;
	if (kernel_has_type(vmlinux, "bpf_iter__bpf_map", BTF_KIND_STRUCT) &&
	    kernel_has_enum_value(vmlinux, "bpf_func_id", "BPF_FUNC_for_each_map_elem"))
		p |= FE_PROBE_MAP_WALK;
	return p;
}

/* What the running kernel offers (FE_PROBE_* bits); 0 without kernel BTF. */
FE_API uint32_t fe_probe(void)
{
	struct btf *vmlinux;
	uint32_t p;

	/* libbpf's complaints (no BTF) go to the log, not to the caller's stderr. */
	libbpf_set_print(on_libbpf_print);
	vmlinux = btf__load_vmlinux_btf();
	p = probe(vmlinux);

	btf__free(vmlinux);
	return p;
}

/* Runs an iterator program once, over what it walks, discarding what it writes. */
static int run_iterator(struct bpf_program *prog)
{
	struct bpf_link *link;
	char buf[256];
	int fd, err = 0;

	link = bpf_program__attach_iter(prog, NULL);
	if (!link)
		return -errno;
	fd = bpf_iter_create(bpf_link__fd(link));
	if (fd < 0) {
		err = fd;
		goto cleanup;
	}
	while ((err = read(fd, buf, sizeof(buf))) > 0)
		;
	if (err < 0)
		err = -errno;
	close(fd);
cleanup:
	bpf_link__destroy(link);
	return err;
}

/* Split the ring buffer budget across CPUs: a power of two pages each, at least 8. */
static size_t perf_pages_per_cpu(uint32_t ring_bytes)
{
	int cpus = libbpf_num_possible_cpus();
	size_t want = ring_bytes / (size_t)sysconf(_SC_PAGESIZE) / (cpus > 0 ? cpus : 1);
	size_t pages = 8;

	while (pages * 2 <= want)
		pages *= 2;
	return pages;
}

/*
 * The verifier gives up with EAGAIN when a signal is pending, and libbpf
 * retries only a few times: a runtime that signals its threads often (a
 * sampling profiler sends SIGPROF every millisecond) could never load the
 * program. Signals that arrive during the load are delivered after it.
 */
static int load_unsignalled(struct flowexporter_bpf *skel)
{
	sigset_t all, saved;
	int err;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	err = flowexporter_bpf__load(skel);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return err;
}

static bool path_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Where the capture's maps and links are pinned: beside the identity maps, one per state version. */
static int capture_dir(char *out, size_t cap, const char *pin_dir)
{
	int n = snprintf(out, cap, "%s/capture-v%d", pin_dir, FE_STATE_VERSION);

	return n > 0 && (size_t)n < cap ? 0 : -ENAMETOOLONG;
}

static int pin_path(char *out, size_t cap, const char *dir, const char *name)
{
	int n = snprintf(out, cap, "%s/%s", dir, name);

	return n > 0 && (size_t)n < cap ? 0 : -ENAMETOOLONG;
}

/* Slots for a capture that tracks up to flows_max sockets: the largest power of two up to half. */
static uint32_t slot_count(uint32_t flows_max)
{
	uint32_t n = 1;

	while (n <= flows_max / 4)
		n <<= 1;
	return n;
}

/* Step 1 (configure): rodata, map sizes and types, which programs load, where maps pin. */
static int configure(struct fe_agent *a, const char *capdir, uint32_t options, uint32_t probed,
		     uint32_t ring_bytes, uint32_t flows_max, uint32_t wakeup_bytes, bool perf,
		     bool seed)
{
	struct bpf_map *pinned[] = { a->skel->maps.flows, a->skel->maps.slots, a->skel->maps.events, a->skel->maps.drops,
				     a->skel->maps.reported_drops, a->skel->maps.host_workload,
				     a->skel->maps.last_sweep };
	char path[PATH_MAX];
	size_t i;
	int err;

	a->skel->rodata->use_ringbuf = !perf;
	a->skel->rodata->use_boot_clock = a->boot_clock;
	a->skel->rodata->sockops_attached = a->sockops;
	a->skel->rodata->follow_seeded = a->follow_seeded;
	/* A threshold the ring can never reach would leave draining to the timer alone. */
	a->skel->rodata->wakeup_bytes = wakeup_bytes < ring_bytes / 4 ? wakeup_bytes : ring_bytes / 4;
	bpf_map__set_max_entries(a->skel->maps.flows, flows_max);
	/*
	 * The states go to slots first where a map iterator can walk them for
	 * the sweep (5.13), which also means BPF atomics (5.12): half as many
	 * as flows_max, a power of two. Without, the smallest table.
	 */
	a->skel->rodata->use_slots = probed & FE_PROBE_MAP_WALK;
	a->skel->rodata->slots_mask = a->skel->rodata->use_slots ? slot_count(flows_max) - 1 : 0;
	bpf_map__set_max_entries(a->skel->maps.slots, a->skel->rodata->slots_mask + 1);
	if (perf) {
		/* max_entries 0: libbpf sizes a perf event array to the CPU count. */
		bpf_map__set_type(a->skel->maps.events, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
		bpf_map__set_key_size(a->skel->maps.events, sizeof(int));
		bpf_map__set_value_size(a->skel->maps.events, sizeof(int));
		bpf_map__set_max_entries(a->skel->maps.events, 0);
	} else {
		bpf_map__set_max_entries(a->skel->maps.events, ring_bytes);
	}
	if (!(probed & FE_PROBE_TP_BTF))
		return fail(-EOPNOTSUPP, "find tp_btf/inet_sock_set_state in this kernel (Linux 5.5+)");
	bpf_program__set_autoload(a->skel->progs.on_sockops, a->sockops);
	bpf_program__set_autoload(a->skel->progs.seed_flows, seed);
	/* Both walk `flows` from a map iterator; the sweep writes to the ring only. */
	bpf_program__set_autoload(a->skel->progs.snapshot_flows, probed & FE_PROBE_MAP_WALK);
	/* Without the program, the smallest buffer: no kernel memory for what nothing writes. */
	if (!(probed & FE_PROBE_MAP_WALK))
		bpf_map__set_max_entries(a->skel->maps.snapshot_out, 1);
	bpf_program__set_autoload(a->skel->progs.sweep_flows, (probed & FE_PROBE_MAP_WALK) && !perf);
	bpf_program__set_autoload(a->skel->progs.count_unfollowed, a->follow_seeded);
	/* Pinned maps outlive the process: the next agent reuses them, and what they hold. */
	if (!(options & FE_OPT_NO_PIN)) {
		for (i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++) {
			err = pin_path(path, sizeof(path), capdir, bpf_map__name(pinned[i]));
			if (!err)
				err = bpf_map__set_pin_path(pinned[i], path);
			if (err)
				return fail(err, "name the pin path of map %s", bpf_map__name(pinned[i]));
		}
	}
	return 0;
}

/*
 * Attaches one program and pins its link as `name`, make-before-break: a
 * cgroup link pinned by an earlier agent gets the new program atomically; a
 * tracing link is replaced by attaching the new one before detaching the old
 * (both run for a moment; the `emitted` mark keeps that to one record).
 * prog NULL: remove what an earlier agent pinned under `name`.
 */
static int attach_pinned(struct bpf_program *prog, const char *capdir, const char *name,
			 int cgroup_fd, const char *what, struct bpf_link **out)
{
	char path[PATH_MAX], fresh[PATH_MAX];
	struct bpf_link *old = NULL, *link;
	int err;

	*out = NULL;
	if (capdir) {
		if (pin_path(path, sizeof(path), capdir, name) ||
		    pin_path(fresh, sizeof(fresh), capdir, "link_new"))
			return fail(-ENAMETOOLONG, "attach %s: pin path", what);
		if (path_exists(path))
			old = bpf_link__open(path);
	}
	if (!prog) {
		if (old) {
			unlink(path);
			bpf_link__destroy(old);
		}
		return 0;
	}
	if (old && cgroup_fd >= 0) {
		err = bpf_link__update_program(old, prog);
		if (err)
			return fail(err, "replace %s", what);
		*out = old;
		return 0;
	}
	link = cgroup_fd >= 0 ? bpf_program__attach_cgroup(prog, cgroup_fd) : bpf_program__attach(prog);
	if (!link) {
		err = -errno;
		bpf_link__destroy(old);
		return fail(err, "attach %s", what);
	}
	if (capdir) {
		unlink(fresh);
		err = bpf_link__pin(link, fresh);
		if (!err && rename(fresh, path))
			err = -errno;
		if (err) {
			bpf_link__destroy(link);
			bpf_link__destroy(old);
			return fail(err, "pin the link of %s at %s", what, path);
		}
	}
	/* The new program runs; the old link, no longer pinned, detaches as its last fd closes. */
	bpf_link__destroy(old);
	*out = link;
	return 0;
}

/* Step 3 (attach): every program, sock_ops first so that no socket falls between the paths. */
static int attach_all(struct fe_agent *a, const char *capdir, const char *cgroup_path)
{
	struct flowexporter_bpf *skel = a->skel;
	char sockops_label[PATH_MAX + 32];
	int cgroup_fd = -1, err;

	snprintf(sockops_label, sizeof(sockops_label), "sock_ops to cgroup %s", cgroup_path);
	if (a->sockops) {
		cgroup_fd = open(cgroup_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cgroup_fd < 0)
			return fail(-errno, "open cgroup %s for sock_ops", cgroup_path);
	}
	err = attach_pinned(a->sockops ? skel->progs.on_sockops : NULL, capdir, FE_LINK_SOCKOPS,
			    cgroup_fd, sockops_label, &skel->links.on_sockops);
	if (cgroup_fd >= 0)
		close(cgroup_fd);
	if (err)
		return err;
	err = attach_pinned(skel->progs.on_state_btf, capdir, FE_LINK_STATE, -1,
			    "tp_btf/inet_sock_set_state", &skel->links.on_state_btf);
	if (!err)
		err = attach_pinned(skel->progs.on_destroy_btf, capdir, FE_LINK_DESTROY_BTF, -1,
				    "tp_btf/tcp_destroy_sock", &skel->links.on_destroy_btf);
	/*
	 * The classic destroy program runs beside the BTF one as a second net: it
	 * is skipped under a different recursion guard (bpf_prog_active, not the
	 * program's own), so a destroy that nests on a CPU reaches one of the two.
	 * It goes with the state tracepoint (follow_check()).
	 */
	if (!err)
		err = attach_pinned(skel->progs.on_destroy_tp, capdir, FE_LINK_DESTROY_TP, -1,
				    "tracepoint/tcp/tcp_destroy_sock", &skel->links.on_destroy_tp);
	return err;
}

/*
 * The task iterator walks the tasks of the agent's PID namespace: only in the
 * initial one does it see every socket's file.
 */
static bool in_initial_pid_namespace(void)
{
	struct stat st;

	/* PROC_PID_INIT_INO: the kernel gives the initial namespace this inode number. */
	return !stat("/proc/self/ns/pid", &st) && st.st_ino == 0xEFFFFFFCu;
}

/* Detaches a program attached by attach_pinned() and removes its pin. */
static void detach_pinned(struct fe_agent *a, const char *name, struct bpf_link **link)
{
	char path[PATH_MAX];

	if (a->capdir[0] && !pin_path(path, sizeof(path), a->capdir, name))
		unlink(path);
	bpf_link__destroy(*link);
	*link = NULL;
}

/*
 * The state tracepoint catches the closes of sockets sock_ops does not
 * follow. Once the seeding (this agent's, or the first one's of a resumed
 * capture) has asked for the state callbacks of every socket it saw (the
 * agent's network namespace), and no open socket with a file, in
 * any namespace, is left unfollowed, it has nothing to catch but orphans of
 * namespaces the seeding could not reach: on_destroy_btf records those
 * (state_tracepoint_detached), and the tracepoint is detached. It ran 10
 * times a connection.
 *
 * The classic destroy program goes too. It could only record a socket it
 * finds state for, whose close no program saw, when the BTF one was skipped
 * on its CPU: with every socket followed by sock_ops, which the kernel never
 * skips, a close goes unseen only when no program runs at all, and the
 * sweep records that. What it still did, two runs a connection, was give
 * back the state of a socket whose BTF destroy was skipped; the sweep does
 * that too (stale states).
 *
 * Returns the unfollowed sockets counted (0: detached, now or before), or
 * -EOPNOTSUPP where the check cannot prove it.
 */
static int64_t follow_check(struct fe_agent *a)
{
	int err;

	if (!a->skel->links.on_state_btf)
		return 0;
	if (!a->follow_seeded || (a->seeded < 0 && !a->resumed) || a->skel->bss->seeded_unfollowed ||
	    !in_initial_pid_namespace())
		return -EOPNOTSUPP;
	a->skel->bss->unfollowed = 0;
	err = run_iterator(a->skel->progs.count_unfollowed);
	if (err < 0)
		return err;
	a->unfollowed = (int64_t)a->skel->bss->unfollowed;
	if (a->unfollowed)
		return a->unfollowed;
	/* Destroy takes over the unfollowed orphans before the tracepoint goes. */
	a->skel->bss->state_tracepoint_detached = true;
	detach_pinned(a, FE_LINK_STATE, &a->skel->links.on_state_btf);
	detach_pinned(a, FE_LINK_DESTROY_TP, &a->skel->links.on_destroy_tp);
	return 0;
}

/* Step 4 (open buffer): maps the ring buffer for fe_poll(), or opens the perf buffer. */
static int open_ring(struct fe_ring *r, int map_fd)
{
	struct bpf_map_info info = {};
	uint32_t len = sizeof(info);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET };
	void *p;

	r->epoll_fd = -1;
	if (bpf_obj_get_info_by_fd(map_fd, &info, &len))
		return fail(-errno, "open the ring buffer: map info");
	r->map_id = info.id;
	r->size = info.max_entries;
	r->page = (size_t)sysconf(_SC_PAGESIZE);
	p = mmap(NULL, r->page, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
	if (p == MAP_FAILED)
		return fail(-errno, "open the ring buffer: map its consumer page");
	r->consumer = p;
	/*
	 * Read-only: the producer page and the data. The kernel offers the data twice in a row, so
	 * that a record across the end reads as one piece; mapping it once costs a split copy of
	 * such a record but halves the ring's share of the agent's resident memory (all of it is
	 * mapped in at once).
	 */
	p = mmap(NULL, r->page + r->size, PROT_READ, MAP_SHARED, map_fd, r->page);
	if (p == MAP_FAILED) {
		munmap(r->consumer, r->page);
		r->consumer = NULL;
		return fail(-errno, "open the ring buffer: map its data");
	}
	r->producer = p;
	r->data = (const uint8_t *)p + r->page;
	r->read_pos = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
	r->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (r->epoll_fd < 0 || epoll_ctl(r->epoll_fd, EPOLL_CTL_ADD, map_fd, &ev))
		return fail(-errno, "open the ring buffer: epoll");
	return 0;
}

static void close_ring(struct fe_ring *r)
{
	if (r->epoll_fd >= 0)
		close(r->epoll_fd);
	if (r->producer)
		munmap((void *)r->producer, r->page + r->size);
	if (r->consumer)
		munmap(r->consumer, r->page);
	memset(r, 0, sizeof(*r));
	r->epoll_fd = -1;
}

FE_API void fe_close(struct fe_agent *a);

/*
 * Opens, loads and attaches the BPF side and seeds already-open sockets.
 * pin_dir: bpffs directory of the identity maps (must exist, 0700); the
 *   capture's own maps and links are pinned below it, so that a restart or
 *   upgrade takes them over where the last agent left them.
 * cgroup_path: cgroup v2 directory to attach sock_ops to; "" for none.
 * ring_bytes: ring buffer size (power of two, multiple of the page size).
 * flows_max: capacity of the per-socket state map.
 * wakeup_bytes: data waiting before the kernel wakes the reader.
 * On success stores the handle in *out and returns 0; on failure returns
 * -errno, fe_error_read() names the step and fe_log_read() has libbpf's log.
 */
FE_API int fe_open(const char *pin_dir, const char *cgroup_path, uint32_t options,
		   uint32_t ring_bytes, uint32_t flows_max, uint32_t wakeup_bytes,
		   struct fe_agent **out)
{
	LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = pin_dir);
	char capdir[PATH_MAX] = "";
	struct btf *vmlinux;
	struct fe_agent *a;
	uint32_t probed;
	bool perf, seed, pin;
	int err;

	*out = NULL;
	log_len = 0;
	log_buf[0] = 0;
	error_buf[0] = 0;
	log_verbose = options & FE_OPT_VERBOSE;
	libbpf_set_print(on_libbpf_print);

	a = calloc(1, sizeof(*a));
	if (!a)
		return fail(-ENOMEM, "allocate the agent");
	a->ring.epoll_fd = -1;
	/* Step 0 (probe): what the kernel offers decides the rest. */
	vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux) {
		err = fail(-errno, "read kernel BTF /sys/kernel/btf/vmlinux");
		goto cleanup;
	}
	probed = probe(vmlinux);
	/*
	 * Parsed kernel BTF takes about 8 MiB, and the load below parses a copy of its own: held
	 * through it, ours set the agent's peak RSS.
	 */
	btf__free(vmlinux);
	err = capture_dir(capdir, sizeof(capdir), pin_dir);
	if (err) {
		fail(err, "name the capture directory under %s", pin_dir);
		goto cleanup;
	}
	perf = (options & FE_OPT_PERF_BUFFER) || !(probed & FE_PROBE_RINGBUF);
	/* A perf buffer belongs to its process: nothing can carry it across a restart. */
	pin = !perf && !(options & FE_OPT_NO_PIN);
	if (!pin && path_exists(capdir)) {
		err = fail(-EEXIST, "use the perf buffer: a pinned ring buffer capture runs at %s (run flowexporter detach first)", capdir);
		goto cleanup;
	}
	if (pin && mkdir(capdir, 0700) && errno != EEXIST) {
		err = fail(-errno, "create the capture directory %s", capdir);
		goto cleanup;
	}
	if (pin) {
		char events[PATH_MAX];

		/* The ring buffer is the last map libbpf pins: with it, an earlier agent's capture runs. */
		a->resumed = !pin_path(events, sizeof(events), capdir, "events") && path_exists(events);
	}
	a->boot_clock = probed & FE_PROBE_BOOT_NS;
	a->sockops = cgroup_path && cgroup_path[0] && (probed & FE_PROBE_SOCKOPS);
	/*
	 * A resumed capture is not seeded again: its programs have followed every socket opened
	 * since its first agent seeded, and the walk is the TCP iterator (CVE-2026-74714 on most
	 * kernels: docs/operations.md).
	 */
	seed = !(options & FE_OPT_NO_SEED) && (probed & FE_PROBE_ITER_TCP) && !a->resumed;
	a->seeded = seed ? 0 : -1;
	a->unfollowed = -1;
	a->follow_seeded = a->sockops && (seed || a->resumed) && (probed & FE_PROBE_SOCKOPS_FOLLOW);
	if (pin)
		snprintf(a->capdir, sizeof(a->capdir), "%s", capdir);

	a->skel = flowexporter_bpf__open_opts(&open_opts);
	if (!a->skel) {
		err = fail(-errno, "open the BPF object");
		goto cleanup;
	}
	err = configure(a, capdir, pin ? options : options | FE_OPT_NO_PIN, probed, ring_bytes,
			flows_max, wakeup_bytes, perf, seed);
	if (err)
		goto cleanup;

	/* Step 2 (load): maps pinned by an earlier agent are reused here, with what they hold. */
	err = load_unsignalled(a->skel);
	if (err) {
		fail(err, a->resumed ? "load the BPF program (reusing the pinned capture in %s: run flowexporter detach if its sizes changed)"
				     : "load the BPF program%s", a->resumed ? capdir : "");
		goto cleanup;
	}
	if (bpf_program__autoload(a->skel->progs.snapshot_flows)) {
		/* snapshot_flows and sweep_flows find `flows` among every map by its ID. */
		struct bpf_map_info info = {};
		uint32_t len = sizeof(info);

		if (bpf_obj_get_info_by_fd(bpf_map__fd(a->skel->maps.flows), &info, &len)) {
			err = fail(-errno, "read the ID of the flow state map");
			goto cleanup;
		}
		a->skel->bss->flows_map_id = info.id;
	}
	err = attach_all(a, pin ? capdir : NULL, cgroup_path);
	if (err)
		goto cleanup;
	if (seed) {
		/* Seeding is best effort: an unseeded socket still yields a record at close. */
		a->seeded = run_iterator(a->skel->progs.seed_flows) < 0 ? -1
									: (int64_t)a->skel->bss->seeded;
	}
	/* Where it cannot prove every open socket followed, the state tracepoint stays. */
	follow_check(a);

	if (perf) {
		struct perf_event_attr attr = {
			.type = PERF_TYPE_SOFTWARE,
			.config = PERF_COUNT_SW_BPF_OUTPUT,
			.sample_type = PERF_SAMPLE_RAW,
			.sample_period = 1,
			/* Wake the reader every N records, not on each. */
			.wakeup_events = wakeup_bytes / sizeof(struct fe_flow) ?: 1,
		};

		a->pb = perf_buffer__new_raw(bpf_map__fd(a->skel->maps.events),
					     perf_pages_per_cpu(ring_bytes), &attr, on_perf_event, a,
					     NULL);
		if (!a->pb) {
			err = fail(-errno, "open the perf buffer");
			goto cleanup;
		}
	} else {
		err = open_ring(&a->ring, bpf_map__fd(a->skel->maps.events));
		if (err)
			goto cleanup;
	}
	*out = a;
	a = NULL;
cleanup:
	if (a)
		fe_close(a);
	return err;
}

static size_t ring_record_bytes(uint32_t len)
{
	len &= ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
	return FE_RING_SPAN((size_t)len);
}

/*
 * Copies whole records from the ring's read position into dst (cap bytes, *len
 * of them already used), without committing them. Stops at a record the
 * kernel has reserved but not yet submitted. A record of another length (an
 * agent of another record version wrote it) cannot be read: it is skipped and
 * counted in *foreign (NULL: the agent's own ring, written by its own programs).
 */
static void ring_read(struct fe_ring *r, uint8_t *dst, uint32_t cap, uint32_t *len_out,
		      uint64_t *foreign)
{
	uint64_t end = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
	uint64_t pos = r->read_pos;

	while (pos < end) {
		const uint32_t *hdr = (const uint32_t *)(r->data + (pos & (r->size - 1)));
		uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);

		if (len & BPF_RINGBUF_BUSY_BIT)
			break;
		if (!(len & BPF_RINGBUF_DISCARD_BIT) && len == sizeof(struct fe_flow)) {
			/* Headers are 8-byte aligned in a power-of-two ring: only the record may wrap. */
			size_t at = ((pos & (r->size - 1)) + BPF_RINGBUF_HDR_SZ) & (r->size - 1);
			size_t first = r->size - at;

			if (*len_out + sizeof(struct fe_flow) > cap)
				break;
			if (first >= sizeof(struct fe_flow)) {
				memcpy(dst + *len_out, r->data + at, sizeof(struct fe_flow));
			} else {
				memcpy(dst + *len_out, r->data + at, first);
				memcpy(dst + *len_out + first, r->data, sizeof(struct fe_flow) - first);
			}
			*len_out += sizeof(struct fe_flow);
		} else if (foreign && !(len & BPF_RINGBUF_DISCARD_BIT)) {
			(*foreign)++;
		}
		pos += ring_record_bytes(len);
	}
	r->read_pos = pos;
}

/* True when the record at the read position is reserved but not yet submitted. */
static bool ring_busy(const struct fe_ring *r)
{
	uint64_t end = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
	const uint32_t *hdr = (const uint32_t *)(r->data + (r->read_pos & (r->size - 1)));

	return r->read_pos < end && (__atomic_load_n(hdr, __ATOMIC_ACQUIRE) & BPF_RINGBUF_BUSY_BIT);
}

static int ring_poll(struct fe_agent *a, int timeout_ms)
{
	struct epoll_event ev;

	/*
	 * Wait the whole timeout unless the kernel forces a wakeup (past the
	 * fill threshold): the BPF side submits without waking the reader, so
	 * records gather for up to timeout_ms and are read in one pass, as
	 * ring_buffer__poll() did. The ring is registered edge-triggered: it
	 * reports readable while anything is uncommitted, which level-triggered
	 * epoll would return at once, every time.
	 */
	if (timeout_ms > 0 && epoll_wait(a->ring.epoll_fd, &ev, 1, timeout_ms) < 0 && errno != EINTR)
		return -errno;
	ring_read(&a->ring, a->dst, a->cap, &a->len, NULL);
	return 0;
}

/*
 * Copies closed-flow records into buf (cap bytes; a multiple of
 * fe_record_size() fills best), waiting up to timeout_ms for the kernel to
 * wake the reader, then draining what is there regardless: the kernel side
 * wakes the reader only past a fill threshold. Returns bytes written and
 * stores in *pos the ring position after them, to pass to fe_commit() once
 * they are safe (0 with the perf buffer, which cannot hold them back).
 */
FE_API int fe_poll(struct fe_agent *a, int timeout_ms, uint8_t *buf, uint32_t cap, uint64_t *pos)
{
	size_t n;
	int err;

	a->dst = buf;
	a->cap = cap;
	a->len = 0;
	*pos = 0;
	if (cap < sizeof(struct fe_flow))
		return -EINVAL;
	if (a->pb) {
		if (a->spill_len) {
			n = a->spill_len < cap ? a->spill_len : cap - cap % sizeof(struct fe_flow);
			memcpy(buf, a->spill, n);
			memmove(a->spill, a->spill + n, a->spill_len - n);
			a->spill_len -= n;
			a->len = n;
			timeout_ms = 0;
		}
		if (a->len + sizeof(struct fe_flow) > cap)
			return a->len;
		err = perf_buffer__poll(a->pb, timeout_ms);
		if (err >= 0)
			err = perf_buffer__consume(a->pb);
		if (err < 0 && err != -EINTR)
			return err;
		return a->len;
	}
	err = ring_poll(a, timeout_ms);
	if (err < 0)
		return err;
	*pos = a->ring.read_pos;
	return a->len;
}

static int ring_commit(struct fe_ring *r, uint64_t pos)
{
	uint64_t consumed, produced;

	if (!r->consumer)
		return 0;
	consumed = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
	produced = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
	if (pos < consumed || pos > produced)
		return -ERANGE;
	__atomic_store_n(r->consumer, pos, __ATOMIC_RELEASE);
	if (r->read_pos < pos)
		r->read_pos = pos;
	return 0;
}

/*
 * Gives the ring's space up to pos back to the kernel: the records before it
 * are safe elsewhere. Also moves the read position forward when pos is past
 * it (records an earlier agent journaled but did not commit). A position
 * behind the committed one, or past what the kernel wrote, is refused.
 */
FE_API int fe_commit(struct fe_agent *a, uint64_t pos)
{
	return ring_commit(&a->ring, pos);
}

/* Records between the consumed position and what the kernel has written (reserved ones too). */
static uint64_t ring_waiting(const struct fe_ring *r)
{
	uint64_t pos, end, n = 0;

	if (!r->consumer)
		return 0;
	pos = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
	end = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
	while (pos < end) {
		uint32_t len = __atomic_load_n((const uint32_t *)(r->data + (pos & (r->size - 1))),
					       __ATOMIC_ACQUIRE);

		if (!(len & BPF_RINGBUF_DISCARD_BIT))
			n++;
		pos += ring_record_bytes(len);
	}
	return n;
}

static uint64_t sum_percpu(int map_fd, uint32_t key)
{
	int cpus = libbpf_num_possible_cpus();
	uint64_t *values, sum = 0;
	int i;

	if (cpus <= 0)
		return 0;
	values = calloc(cpus, sizeof(*values));
	if (values && !bpf_map_lookup_elem(map_fd, &key, values))
		for (i = 0; i < cpus; i++)
			sum += values[i];
	free(values);
	return sum;
}

static uint64_t recursion_misses(const struct bpf_program *prog)
{
	struct bpf_prog_info info = {};
	uint32_t len = sizeof(info);

	if (!bpf_program__autoload(prog) ||
	    bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len))
		return 0;
	return info.recursion_misses;
}

/*
 * Checks again whether sock_ops follows every open socket, and detaches the
 * state tracepoint if so (follow_check). The agent calls it now and then
 * while the tracepoint is attached: the sockets that kept it (open since
 * before the capture, in other namespaces) close in their time.
 */
FE_API int64_t fe_follow_check(struct fe_agent *a)
{
	return follow_check(a);
}

/*
 * Runs a sweep pass (sweep_flows): the sockets whose close and destroy no
 * program saw are recorded into the ring from the states they left in
 * `flows`. The agent calls it now and then. Returns the records it made, or
 * -errno: -EOPNOTSUPP without a sweep (perf buffer, or no map iterator).
 */
FE_API int64_t fe_sweep(struct fe_agent *a)
{
	uint64_t before = a->skel->bss->swept;
	int err;

	if (!bpf_program__autoload(a->skel->progs.sweep_flows))
		return -EOPNOTSUPP;
	err = run_iterator(a->skel->progs.sweep_flows);
	if (err < 0)
		return fail(err, "sweep the flow states");
	return (int64_t)(a->skel->bss->swept - before);
}

/* Fills out[0..n) with FE_STAT_* values; returns how many it filled. */
FE_API int fe_stats(struct fe_agent *a, uint64_t *out, uint32_t n)
{
	uint64_t s[FE_STAT_COUNT];

	s[FE_STAT_KERNEL_DROPS] = sum_percpu(bpf_map__fd(a->skel->maps.drops), FE_DROP_OUTPUT);
	s[FE_STAT_RECURSION_MISSES] = recursion_misses(a->skel->progs.on_state_btf) +
				      recursion_misses(a->skel->progs.on_destroy_btf) +
				      recursion_misses(a->skel->progs.on_destroy_tp);
	s[FE_STAT_PERF_LOST] = a->perf_lost;
	s[FE_STAT_FLOWS_MAX] = bpf_map__max_entries(a->skel->maps.flows);
	s[FE_STAT_TRANSPORT] = a->pb ? 1 : 0;
	s[FE_STAT_SOCKOPS] = a->sockops ? 1 : 0;
	s[FE_STAT_CLOCK] = a->boot_clock ? 0 : 1;
	s[FE_STAT_SEEDED] = (uint64_t)a->seeded;
	s[FE_STAT_RESUMED] = a->resumed ? 1 : 0;
	s[FE_STAT_RING_ID] = a->ring.map_id;
	s[FE_STAT_RING_CONSUMED] =
		a->ring.consumer ? __atomic_load_n(a->ring.consumer, __ATOMIC_ACQUIRE) : 0;
	s[FE_STAT_RING_PRODUCED] =
		a->ring.producer ? __atomic_load_n(a->ring.producer, __ATOMIC_ACQUIRE) : 0;
	s[FE_STAT_RING_WAITING] = ring_waiting(&a->ring);
	s[FE_STAT_STATE_TRACEPOINT] = a->skel->links.on_state_btf ? 1 : 0;
	s[FE_STAT_UNFOLLOWED] = (uint64_t)a->unfollowed;
	s[FE_STAT_UNFOLLOWED_AT_DESTROY] = a->skel->bss->unfollowed_at_destroy;
	s[FE_STAT_SWEPT] = a->skel->bss->swept;
	s[FE_STAT_SWEPT_STALE] = a->skel->bss->swept_stale;
	if (n > FE_STAT_COUNT)
		n = FE_STAT_COUNT;
	memcpy(out, s, n * sizeof(*out));
	return (int)n;
}

/* A duplicate of the named map's fd (the caller closes it), or -errno. */
FE_API int fe_map_fd(struct fe_agent *a, const char *name)
{
	struct bpf_map *map = bpf_object__find_map_by_name(a->skel->obj, name);
	int fd;

	if (!map)
		return -ENOENT;
	fd = fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0);
	return fd < 0 ? -errno : fd;
}

/*
 * Starts a snapshot pass: interim records (FE_FLAG_INTERIM) of the open
 * sockets the capture tracks that are at least min_age_ns old, in every
 * network namespace. Read them with fe_snapshot_read(). One pass at a time:
 * -EBUSY while one runs; -EOPNOTSUPP without a map iterator.
 */
FE_API int fe_snapshot_begin(struct fe_agent *a, uint64_t min_age_ns)
{
	struct fe_snapshot *s = &a->snapshot;

	error_buf[0] = 0;
	if (s->running)
		return fail(-EBUSY, "start a snapshot pass: one is running");
	if (!bpf_program__autoload(a->skel->progs.snapshot_flows))
		return fail(-EOPNOTSUPP, "start a snapshot pass: this kernel has no map iterator that can walk a map (Linux 5.13+)");
	a->skel->bss->snapshot_min_age_ns = min_age_ns;
	/* No run yet, and one due. */
	a->skel->bss->snapshot_first = true;
	a->skel->bss->snapshot_written = 0;
	a->skel->bss->snapshot_more = true;
	s->next = 0;
	s->running = true;
	return 0;
}

/* Ends the running pass, if any (safe to call when none runs). */
FE_API void fe_snapshot_end(struct fe_agent *a)
{
	a->snapshot.running = false;
}

/* One run of snapshot_flows: it leaves its records in snapshot_out, and says whether another is due. */
static int snapshot_run(struct fe_agent *a)
{
	int err;

	a->skel->bss->snapshot_written = 0;
	a->skel->bss->snapshot_more = false;
	err = run_iterator(a->skel->progs.snapshot_flows);
	if (err < 0)
		return fail(err, "walk the flow states for interim records");
	a->skel->bss->snapshot_first = false;
	a->snapshot.next = 0;
	return 0;
}

/* Records copied per syscall: the keys the batch lookup returns alongside take the stack. */
#define SNAPSHOT_COPY_BATCH 1024

/* Copies records [first, first + n) of snapshot_out to dst (n <= SNAPSHOT_COPY_BATCH). */
static int copy_run_records(struct fe_agent *a, uint32_t first, uint32_t n, uint8_t *dst)
{
	uint32_t keys[SNAPSHOT_COPY_BATCH], before = first - 1, last, count = n;
	int err;

	/* A batch starts after the key it is given: none for the first record. */
	err = bpf_map_lookup_batch(bpf_map__fd(a->skel->maps.snapshot_out), first ? &before : NULL,
				   &last, keys, dst, &count, NULL);
	if (err && err != -ENOENT)
		return fail(err, "copy the interim records out");
	return count == n ? 0 : fail(-EIO, "copy the interim records out: %u of %u", count, n);
}

/*
 * Copies the pass's next interim records into buf: returns the bytes of
 * whole records written (cap rounded down to a multiple of fe_record_size(),
 * filled unless the pass ends first), 0 once the pass is over (it is then
 * ended), or -errno (the pass is then ended too). Blocks while the kernel
 * walks the states.
 */
FE_API int fe_snapshot_read(struct fe_agent *a, uint8_t *buf, uint32_t cap)
{
	struct fe_snapshot *s = &a->snapshot;
	const size_t size = sizeof(struct fe_flow);
	size_t want = cap - cap % size, len = 0, n;
	uint32_t written;
	int err;

	if (!s->running)
		return -EBADF;
	if (want == 0 || want > INT_MAX)
		return -EINVAL;
	while (len < want) {
		written = a->skel->bss->snapshot_written;
		if (s->next == written) {
			if (!a->skel->bss->snapshot_more)
				break;
			err = snapshot_run(a);
			if (err) {
				fe_snapshot_end(a);
				return err;
			}
			continue;
		}
		n = written - s->next;
		if (n > (want - len) / size)
			n = (want - len) / size;
		if (n > SNAPSHOT_COPY_BATCH)
			n = SNAPSHOT_COPY_BATCH;
		err = copy_run_records(a, s->next, (uint32_t)n, buf + len);
		if (err) {
			fe_snapshot_end(a);
			return err;
		}
		s->next += n;
		len += n * size;
	}
	if (len == 0)
		fe_snapshot_end(a);
	return (int)len;
}

FE_API void fe_close(struct fe_agent *a)
{
	if (!a)
		return;
	close_ring(&a->ring);
	perf_buffer__free(a->pb);
	flowexporter_bpf__destroy(a->skel);
	free(a->spill);
	free(a);
}

/*
 * A capture an agent of another state version left pinned, being retired by
 * this one: its programs detached, its ring buffer read to the end. What its
 * ring holds closed while no agent read it (the upgrade's restart) or while
 * both versions' programs ran (the handover): the caller ships it.
 */
struct fe_retiring {
	struct fe_ring ring;
	uint64_t foreign;	   /* records of another length: another record version's, unreadable */
	uint64_t unreported_drops; /* what its ring lost that no batch reported */
};

/* fe_retiring_stats() indices */
enum fe_retiring_stat {
	FE_RETIRING_RING_ID,	      /* kernel ID of its ring buffer map */
	FE_RETIRING_FOREIGN,	      /* records of another record version, skipped */
	FE_RETIRING_UNREPORTED_DROPS, /* its kernel drops no batch reported */
	FE_RETIRING_CONSUMED,	      /* its ring position committed as consumed */
	FE_RETIRING_COUNT,
};

/* Most links one capture pins: room to spare over this version's four. */
#define FE_RETIRING_MAX_LINKS 16

/*
 * After its link is gone, a program that was already running finishes: a few
 * microseconds, unless its task was preempted inside it. Wait this long.
 */
#define FE_RETIRING_GRACE_US 50000

/* The kernel object behind a bpffs pin: "bpf-link", "bpf-map", "bpf-prog". */
static bool pinned_is(int fd, const char *kind)
{
	char proc[64], target[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = 0;
	return strcmp(target + (strncmp(target, "anon_inode:", 11) ? 0 : 11), kind) == 0;
}

/*
 * Unpins every link under capdir (whatever this version named them), waits
 * up to wait_ms until the kernel has released them (each detaches its program
 * as it goes), then lets programs already running finish.
 */
static int retire_links(const char *capdir, uint32_t wait_ms)
{
	uint32_t links[FE_RETIRING_MAX_LINKS], n = 0, i, waited = 0;
	char path[PATH_MAX];
	struct dirent *e;
	DIR *dir = opendir(capdir);
	bool link;
	int err = 0;

	if (!dir)
		return fail(-errno, "retire the capture %s: open it", capdir);
	while ((e = readdir(dir))) {
		struct bpf_link_info info = {};
		uint32_t len = sizeof(info);
		int fd;

		if (e->d_name[0] == '.' || pin_path(path, sizeof(path), capdir, e->d_name))
			continue;
		fd = bpf_obj_get(path);
		if (fd < 0)
			continue;
		link = pinned_is(fd, "bpf-link");
		if (link && !bpf_obj_get_info_by_fd(fd, &info, &len) && n < FE_RETIRING_MAX_LINKS)
			links[n++] = info.id;
		close(fd);
		/* The pin is the link's last holder: unpinned, the kernel releases it. */
		if (link && unlink(path)) {
			err = fail(-errno, "retire the capture %s: unpin %s", capdir, e->d_name);
			break;
		}
	}
	closedir(dir);
	if (err)
		return err;
	for (i = 0; i < n;) {
		int fd = bpf_link_get_fd_by_id(links[i]);

		if (fd < 0) {
			i++;
			continue;
		}
		close(fd);
		if (waited >= wait_ms)
			return fail(-EBUSY, "retire the capture %s: its link %u is still attached after %u ms (another process holds it: bpftool link show id %u)",
				    capdir, links[i], wait_ms, links[i]);
		usleep(2000);
		waited += 2;
	}
	if (n)
		usleep(FE_RETIRING_GRACE_US);
	return 0;
}

/*
 * Retires the capture an agent of another state version left pinned in
 * capdir. Call it once this agent's own programs are attached, so that every
 * close is seen by one of the two: it unpins the old links, waits up to
 * wait_ms until the kernel has released them and their programs no longer
 * run, and opens the old ring buffer for fe_retiring_read(). The maps stay
 * pinned until the caller, having shipped what the ring held, closes the
 * handle and removes capdir.
 */
FE_API int fe_retiring_open(const char *capdir, uint32_t wait_ms, struct fe_retiring **out)
{
	char path[PATH_MAX];
	struct fe_retiring *r;
	uint64_t drops = 0, reported = 0;
	uint32_t zero = 0;
	int err, fd;

	*out = NULL;
	err = retire_links(capdir, wait_ms);
	if (err)
		return err;
	r = calloc(1, sizeof(*r));
	if (!r)
		return fail(-ENOMEM, "retire the capture %s", capdir);
	r->ring.epoll_fd = -1;
	err = pin_path(path, sizeof(path), capdir, "events");
	fd = err ? -1 : bpf_obj_get(path);
	/* No ring (an agent that died before pinning it): nothing to read. */
	if (fd < 0 && (err || errno != ENOENT)) {
		err = fail(err ? err : -errno, "retire the capture %s: open its ring buffer", capdir);
		free(r);
		return err;
	}
	if (fd >= 0) {
		err = open_ring(&r->ring, fd);
		close(fd);
		if (err) {
			close_ring(&r->ring);
			free(r);
			return err;
		}
	}
	/* Its drop counters, when this version had them where ours are. */
	if (!pin_path(path, sizeof(path), capdir, "drops") && (fd = bpf_obj_get(path)) >= 0) {
		drops = sum_percpu(fd, FE_DROP_OUTPUT);
		close(fd);
	}
	if (!pin_path(path, sizeof(path), capdir, "reported_drops") &&
	    (fd = bpf_obj_get(path)) >= 0) {
		bpf_map_lookup_elem(fd, &zero, &reported);
		close(fd);
	}
	r->unreported_drops = drops > reported ? drops - reported : 0;
	*out = r;
	return 0;
}

/*
 * Copies the retired ring's next records into buf (cap bytes), without
 * committing them; stores in *pos the ring position after them. Returns the
 * bytes written: 0 once the ring is read to its end.
 */
FE_API int fe_retiring_read(struct fe_retiring *r, uint8_t *buf, uint32_t cap, uint64_t *pos)
{
	uint32_t len = 0;
	int spins;

	*pos = 0;
	if (cap < sizeof(struct fe_flow))
		return -EINVAL;
	if (!r->ring.producer)
		return 0;
	/* A program that was mid-record when its link went finishes it within microseconds. */
	for (spins = 0; spins < 1000 && ring_busy(&r->ring); spins++)
		usleep(100);
	ring_read(&r->ring, buf, cap, &len, &r->foreign);
	*pos = r->ring.read_pos;
	return (int)len;
}

/* Gives the retired ring's space up to pos back: the records before it are safe. */
FE_API int fe_retiring_commit(struct fe_retiring *r, uint64_t pos)
{
	return ring_commit(&r->ring, pos);
}

/* Fills out[0..n) with FE_RETIRING_* values; returns how many it filled. */
FE_API int fe_retiring_stats(struct fe_retiring *r, uint64_t *out, uint32_t n)
{
	uint64_t s[FE_RETIRING_COUNT];

	s[FE_RETIRING_RING_ID] = r->ring.map_id;
	s[FE_RETIRING_FOREIGN] = r->foreign;
	s[FE_RETIRING_UNREPORTED_DROPS] = r->unreported_drops;
	s[FE_RETIRING_CONSUMED] =
		r->ring.consumer ? __atomic_load_n(r->ring.consumer, __ATOMIC_ACQUIRE) : 0;
	if (n > FE_RETIRING_COUNT)
		n = FE_RETIRING_COUNT;
	memcpy(out, s, n * sizeof(*out));
	return (int)n;
}

FE_API void fe_retiring_close(struct fe_retiring *r)
{
	if (!r)
		return;
	close_ring(&r->ring);
	free(r);
}

static int64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Wall clock minus the kernel's event clock (0: CLOCK_BOOTTIME, 1:
 * CLOCK_MONOTONIC), from the tightest of several realtime/clock/realtime
 * readings. Returns the reading's uncertainty in ns.
 */
FE_API int64_t fe_clock_offset(uint32_t clock, int64_t *offset_ns)
{
	clockid_t id = clock ? CLOCK_MONOTONIC : CLOCK_BOOTTIME;
	int64_t best = INT64_MAX;
	int i;

	for (i = 0; i < 7; i++) {
		int64_t before = clock_ns(CLOCK_REALTIME);
		int64_t mid = clock_ns(id);
		int64_t after = clock_ns(CLOCK_REALTIME);

		if (after - before < best) {
			best = after - before;
			*offset_ns = before + (after - before) / 2 - mid;
		}
	}
	return best;
}

/* Pinned and agent-owned maps, by fd: thin wrappers that return -errno. */

FE_API int fe_map_open_pinned(const char *path)
{
	return bpf_obj_get(path);
}

/* out: type, key size, value size, max entries. */
FE_API int fe_map_info(int fd, uint32_t *out)
{
	struct bpf_map_info info = {};
	uint32_t len = sizeof(info);
	int err = bpf_obj_get_info_by_fd(fd, &info, &len);

	if (err)
		return err;
	out[0] = info.type;
	out[1] = info.key_size;
	out[2] = info.value_size;
	out[3] = info.max_entries;
	return 0;
}

FE_API int fe_map_lookup(int fd, const void *key, void *value)
{
	return bpf_map_lookup_elem(fd, key, value);
}

FE_API int fe_map_update(int fd, const void *key, const void *value, uint64_t flags)
{
	return bpf_map_update_elem(fd, key, value, flags);
}

FE_API int fe_map_delete(int fd, const void *key)
{
	return bpf_map_delete_elem(fd, key);
}

/* key NULL: the first key. Returns -ENOENT after the last. */
FE_API int fe_map_next_key(int fd, const void *key, void *next)
{
	return bpf_map_get_next_key(fd, key, next);
}

/* Number of entries (walks the keys in C: one call instead of one per key). */
FE_API int fe_map_count(int fd, uint32_t key_size)
{
	uint8_t *key = malloc(key_size), *next = malloc(key_size);
	int n = 0, err = 0;

	if (!key || !next) {
		err = -ENOMEM;
		goto cleanup;
	}
	for (err = bpf_map_get_next_key(fd, NULL, next); !err;
	     err = bpf_map_get_next_key(fd, key, next)) {
		memcpy(key, next, key_size);
		n++;
	}
	err = err == -ENOENT ? n : err;
cleanup:
	free(key);
	free(next);
	return err;
}

FE_API int fe_fd_close(int fd)
{
	return close(fd) ? -errno : 0;
}

/* mount(2) of a pseudo filesystem (tracefs, bpf) at target: the agent mounts what is missing. */
FE_API int fe_mount(const char *fstype, const char *target)
{
	return mount(fstype, target, fstype, 0, NULL) ? -errno : 0;
}

/*
 * Batch compression: each call writes one self-contained zstd frame or gzip member of src into
 * dst (frames concatenate, so a window is compressed a piece at a time as it fills). The agent
 * compresses here rather than through node:zlib, whose Node compatibility layer alone held about
 * 4 MiB of an idle agent's memory. Decoders (the collector, the spool's checks) stay on
 * node:zlib; tests/frame_compressor_test.ts holds the two together.
 */

/*
 * The calling thread's compression context (the agent compresses on its main thread): its tables,
 * about 0.6 MiB at level 1, are allocated once rather than for every 256 KiB piece, and given back
 * by fe_release_idle_memory() while the agent is quiet.
 */
static __thread ZSTD_CCtx *zstd_cctx;

/* Largest frame fe_zstd_frame() writes for len bytes. */
FE_API uint64_t fe_zstd_bound(uint64_t len)
{
	return ZSTD_compressBound(len);
}

/*
 * One zstd frame at level, with a content checksum (a flipped bit is caught, as by gzip's CRC).
 * Returns its size, -ENOSPC when cap is short of fe_zstd_bound(len), or -EINVAL.
 */
FE_API int64_t fe_zstd_frame(const uint8_t *src, uint64_t len, uint8_t *dst, uint64_t cap,
			     int32_t level)
{
	ZSTD_CCtx *cctx = zstd_cctx;
	size_t n;

	if (!cctx && !(cctx = zstd_cctx = ZSTD_createCCtx()))
		return -ENOMEM;
	ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
	if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)))
		return -EINVAL;
	n = ZSTD_compress2(cctx, dst, cap, src, len);
	if (ZSTD_isError(n))
		return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EINVAL;
	return (int64_t)n;
}

/* A gzip (RFC 1952) deflate stream at level: windowBits 15, plus 16 for the gzip wrapper. */
static int gzip_init(z_stream *z, int32_t level)
{
	memset(z, 0, sizeof(*z));
	return deflateInit2(z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK ? 0 : -EINVAL;
}

/* Largest member fe_gzip_member() writes for len bytes at level; 0 for a level zlib refuses. */
FE_API uint64_t fe_gzip_bound(uint64_t len, int32_t level)
{
	uint64_t bound;
	z_stream z;

	if (len > UINT32_MAX || gzip_init(&z, level))
		return 0;
	bound = deflateBound(&z, (uLong)len);
	deflateEnd(&z);
	return bound;
}

/* One gzip member at level. Returns its size, -ENOSPC when cap is short, or -EINVAL. */
FE_API int64_t fe_gzip_member(const uint8_t *src, uint64_t len, uint8_t *dst, uint64_t cap,
			      int32_t level)
{
	z_stream z;
	int ret;

	if (len > UINT32_MAX || gzip_init(&z, level))
		return -EINVAL;
	z.next_in = (Bytef *)src;
	z.avail_in = (uInt)len;
	z.next_out = dst;
	z.avail_out = cap > UINT32_MAX ? UINT32_MAX : (uInt)cap;
	ret = deflate(&z, Z_FINISH);
	deflateEnd(&z);
	return ret == Z_STREAM_END ? (int64_t)z.total_out : -ENOSPC;
}

/*
 * Flows in their wire form, straight from kernel records: byte for byte what lib/wire.ts
 * RecordWriter writes on its direct path, for the records that path takes, at a fraction of its
 * CPU (the agent encodes every record it reads). ffi/record_encoder.ts passes what the wire
 * format defines (lib/wire.ts RECORD_ENCODING: the codes kept below their counts, the flow end
 * by close state and error), hands each record this declines to RecordWriter, and
 * tests/record_encoder_test.ts holds the two encoders together.
 */

static uint8_t *cbor_head(uint8_t *p, uint8_t major, uint32_t n)
{
	if (n < 24) {
		*p++ = major | n;
	} else if (n < 0x100) {
		*p++ = major | 24;
		*p++ = n;
	} else if (n < 0x10000) {
		*p++ = major | 25;
		*p++ = n >> 8;
		*p++ = n;
	} else {
		*p++ = major | 26;
		for (int shift = 24; shift >= 0; shift -= 8)
			*p++ = n >> shift;
	}
	return p;
}

/* Shortest form up to 2^32 - 1, the 8-byte form above. */
static uint8_t *cbor_u64(uint8_t *p, uint64_t n)
{
	if (n >> 32 == 0)
		return cbor_head(p, 0, (uint32_t)n);
	*p++ = 0x1b;
	for (int shift = 56; shift >= 0; shift -= 8)
		*p++ = n >> shift;
	return p;
}

static uint8_t *cbor_bytes(uint8_t *p, uint8_t major, const uint8_t *src, uint32_t len)
{
	p = cbor_head(p, major, len);
	memcpy(p, src, len);
	return p + len;
}

/* The checks of lib/decode.ts RecordCursor.plausible() on a time, in the same doubles. */
static bool wall_time_plausible(uint64_t kernel_ns, int64_t clock_offset_ns)
{
	double approx = (double)(uint32_t)(kernel_ns >> 32) * 4294967296.0 + (double)clock_offset_ns;

	return approx > 1099511627776.0 /* 2^40 */ && approx < 4611686018427387904.0 /* 2^62 */;
}

/* The workload ID's length when it is ASCII (its bytes are then its UTF-8), -1 otherwise. */
static int ascii_workload_length(const struct fe_flow *r)
{
	int len = 0;

	while (len < FE_WORKLOAD_ID_LEN && r->workload_id[len]) {
		if ((uint8_t)r->workload_id[len] >= 0x80)
			return -1;
		len++;
	}
	return len;
}

/*
 * Whether RecordWriter's direct path takes the record: family 4 or 6, both times well inside
 * [2^40, 2^62) ns once offset, byte counters below 2^53, an ASCII workload ID, and an end not
 * before the start.
 */
static bool encodable(const struct fe_flow *r, int64_t clock_offset_ns, int *workload_len)
{
	const uint64_t max_safe = (1ULL << 53) - 1;

	if (r->family != FE_FAMILY_IPV4 && r->family != FE_FAMILY_IPV6)
		return false;
	if (!wall_time_plausible(r->t_start_ns, clock_offset_ns) ||
	    !wall_time_plausible(r->t_end_ns, clock_offset_ns))
		return false;
	/* RecordCursor.safe() reads the high halves: at most 2^21 - 1 each. */
	if ((r->bytes_sent | r->bytes_acked | r->bytes_received | r->bytes_retrans) >> 32 > max_safe >> 32)
		return false;
	*workload_len = ascii_workload_length(r);
	return *workload_len >= 0 && r->t_end_ns >= r->t_start_ns;
}

/*
 * Encodes up to count records (struct fe_flow, back to back) into out from offset used, each
 * flow's end offset into ends[i]. It stops before a record RecordWriter's direct path would not
 * take, or when fewer than room bytes (the most a flow takes) are left before cap. The codes of
 * identity source, direction and close state pass through below their counts (else 0); the flow
 * end of a final record is end_codes[close state * 256 + error], of an interim one open_end, and
 * the record kind interim_kind or 0. Returns the records encoded.
 */
FE_API uint32_t fe_encode_flows(const uint8_t *records, uint32_t count, const uint8_t *boot_id,
				int64_t clock_offset_ns, const uint8_t *end_codes, uint32_t states,
				uint32_t sources, uint32_t directions, uint32_t open_end,
				uint32_t interim_kind, uint8_t *out, uint32_t used, uint32_t cap,
				uint32_t room, uint32_t *ends)
{
	static const uint8_t v4_tail = 12; /* an IPv4 address sits in the last 4 of 16 bytes */
	uint32_t i;

	for (i = 0; i < count && cap - used >= room; i++) {
		struct fe_flow r;
		uint8_t *p = out + used;
		uint32_t ip_start, ip_len, state;
		bool interim;
		int workload_len;

		memcpy(&r, records + (size_t)i * sizeof(r), sizeof(r));
		if (!encodable(&r, clock_offset_ns, &workload_len))
			break;
		ip_start = r.family == FE_FAMILY_IPV4 ? v4_tail : 0;
		ip_len = r.family == FE_FAMILY_IPV4 ? 4 : 16;
		state = r.close_state < states ? r.close_state : 0;
		interim = r.flags & FE_FLAG_INTERIM;

		p = cbor_head(p, 0xa0, 27);
		*p++ = 0;
		p = cbor_bytes(p, 0x40, r.local_ip + ip_start, ip_len);
		*p++ = 1;
		p = cbor_bytes(p, 0x60, (const uint8_t *)r.workload_id, workload_len);
		*p++ = 2;
		p = cbor_u64(p, r.t_start_ns + (uint64_t)clock_offset_ns);
		*p++ = 3;
		p = cbor_u64(p, r.t_end_ns + (uint64_t)clock_offset_ns);
		*p++ = 4;
		*p++ = r.family;
		*p++ = 5;
		p = cbor_head(p, 0, r.local_port);
		*p++ = 6;
		p = cbor_bytes(p, 0x40, r.remote_ip + ip_start, ip_len);
		*p++ = 7;
		p = cbor_head(p, 0, r.remote_port);
		*p++ = 8;
		*p++ = r.identity_source < sources ? r.identity_source : 0;
		*p++ = 9;
		*p++ = r.flags & FE_FLAG_SEEDED ? 0xf5 : 0xf4;
		*p++ = 10;
		*p++ = r.direction < directions ? r.direction : 0;
		*p++ = 11;
		*p++ = state;
		*p++ = 12;
		*p++ = interim ? open_end : end_codes[state * 256 + r.error];
		*p++ = 13;
		p = cbor_head(p, 0, r.error);
		*p++ = 14;
		p = cbor_u64(p, r.bytes_sent);
		*p++ = 15;
		p = cbor_u64(p, r.bytes_acked);
		*p++ = 16;
		p = cbor_u64(p, r.bytes_received);
		*p++ = 17;
		p = cbor_head(p, 0, r.segs_out);
		*p++ = 18;
		p = cbor_head(p, 0, r.segs_in);
		*p++ = 19;
		p = cbor_head(p, 0, r.total_retrans);
		*p++ = 20;
		p = cbor_head(p, 0, r.srtt_us);
		*p++ = 21;
		p = cbor_head(p, 0, r.min_rtt_us);
		*p++ = 22;
		p = cbor_head(p, 0, r.delivered);
		*p++ = 23;
		p = cbor_head(p, 0, r.lost);
		p = cbor_head(p, 0, 24);
		/* The flow ID: one byte string of the boot ID, then the cookie big-endian. */
		p = cbor_head(p, 0x40, 16 + 8);
		memcpy(p, boot_id, 16);
		p += 16;
		for (int shift = 56; shift >= 0; shift -= 8)
			*p++ = r.cookie >> shift;
		p = cbor_head(p, 0, 25);
		p = cbor_u64(p, r.bytes_retrans);
		p = cbor_head(p, 0, 26);
		*p++ = interim ? interim_kind : 0;
		used = p - out;
		ends[i] = used;
	}
	return i;
}

/*
 * Gives back what a quiet agent does not need: the calling thread's compression context (the
 * next window makes it again) and the C heap's free memory. glibc returns only the heap's top,
 * and only above a threshold that rises with the largest block freed, so what sealing and
 * shipping a window allocated and freed stayed in a quiet agent's RSS: about 2 MiB. The agent
 * calls it after a window closed on its interval is shipped, once a minute by default.
 * Returns 1 when heap memory went back, 0 when none did or the C library has no malloc_trim().
 */
FE_API int fe_release_idle_memory(void)
{
	ZSTD_freeCCtx(zstd_cctx);
	zstd_cctx = NULL;
#ifdef __GLIBC__
	return malloc_trim(0);
#else
	return 0;
#endif
}

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21 /* Linux 5.4; older C libraries lack the name */
#endif

/*
 * Gives back the pages of the process's own executable that only starting it read: the deno
 * executable (or the compiled binary) is over 90 MiB, and starting the agent (Deno's CLI, module
 * loading, the transpiler, the startup snapshot) reads about 36 MiB of it, of which an idle agent
 * runs in about 7 and a busy one in about 25. MADV_PAGEOUT reclaims the clean pages only this
 * process maps: they leave its RSS and the page cache, and its cgroup is no longer charged for
 * them (pages another process maps, such as a `deno task` parent's, stay). A page needed again is
 * read back on its next use. Writable mappings are left alone: their private copies are anonymous
 * memory, which paging out would push to swap. The agent calls it once, when it has started.
 * Returns the bytes of the mappings advised, or -errno (-EINVAL before Linux 5.4).
 */
FE_API int64_t fe_release_executable_pages(void)
{
	unsigned long start, end, inode;
	unsigned int major, minor;
	char perms[5], *line = NULL;
	size_t line_cap = 0;
	int64_t advised = 0;
	struct stat exe;
	FILE *maps;

	if (stat("/proc/self/exe", &exe))
		return -errno;
	maps = fopen("/proc/self/maps", "re");
	if (!maps)
		return -errno;
	while (getline(&line, &line_cap, maps) > 0) {
		if (sscanf(line, "%lx-%lx %4s %*x %x:%x %lu", &start, &end, perms, &major, &minor,
			   &inode) != 6)
			continue;
		if (inode != exe.st_ino || makedev(major, minor) != exe.st_dev || perms[1] == 'w')
			continue;
		if (madvise((void *)start, end - start, MADV_PAGEOUT)) {
			advised = -errno;
			break;
		}
		advised += (int64_t)(end - start);
	}
	free(line);
	fclose(maps);
	return advised;
}
