// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The native boundary of flowexporter: loads the BPF skeleton, attaches it,
 * and hands closed-flow records to the caller's buffer in bulk. A small C
 * ABI for Deno.dlopen (ffi/symbols.ts mirrors it): every function returns
 * 0 (or a count) on success and -errno on failure; nothing calls back into
 * JavaScript.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include "flowexporter.h"
#include "flowexporter.skel.h"

#define FE_API __attribute__((visibility("default")))

/* Bump when a signature below or an FE_STAT_* index changes. */
#define FE_ABI_VERSION 1

_Static_assert(sizeof(struct fe_flow) == 248,
	       "struct fe_flow changed: bump FE_FLOW_VERSION and update lib/decode.ts");
_Static_assert(sizeof(struct fe_port_key) == 8, "struct fe_port_key is a pinned-map contract");
_Static_assert(sizeof(struct fe_workload) == FE_WORKLOAD_ID_LEN,
	       "struct fe_workload is a pinned-map contract");

/* fe_open() options */
#define FE_OPT_PERF_BUFFER (1u << 0)	   /* perf buffer even where a ring buffer works */
#define FE_OPT_CLASSIC_TRACEPOINT (1u << 1) /* classic tracepoint even where tp_btf works */
#define FE_OPT_NO_SEED (1u << 2)	   /* do not seed already-open sockets */
#define FE_OPT_VERBOSE (1u << 3)	   /* keep libbpf debug output in the log */

/* fe_stats() indices */
enum fe_stat {
	FE_STAT_KERNEL_DROPS,	  /* records the BPF side could not hand over */
	FE_STAT_RECURSION_MISSES, /* program runs the kernel skipped (nested on a CPU) */
	FE_STAT_PERF_LOST,	  /* records the perf buffer reported lost */
	FE_STAT_FLOWS_MAX,	  /* capacity of the per-socket state map */
	FE_STAT_TRANSPORT,	  /* 0 ring buffer, 1 perf buffer */
	FE_STAT_ATTACH,		  /* 0 tp_btf, 1 classic tracepoint */
	FE_STAT_CLOCK,		  /* 0 CLOCK_BOOTTIME, 1 CLOCK_MONOTONIC */
	FE_STAT_SEEDED,		  /* sockets seeded at start, or -1 when seeding was unavailable */
	FE_STAT_COUNT,
};

/* Errors that are not an errno: the caller's buffer filled up mid-drain. */
#define FE_BUFFER_FULL (-ENOBUFS)

struct fe_agent {
	struct flowexporter_bpf *skel;
	struct ring_buffer *rb;
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
	bool classic;
	bool boot_clock;
};

/* The last part of libbpf's log (the verifier's last lines matter most). */
static char log_buf[16384];
static size_t log_len;
static bool log_verbose;

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

FE_API uint32_t fe_abi_version(void)
{
	return FE_ABI_VERSION;
}

FE_API uint32_t fe_record_size(void)
{
	return sizeof(struct fe_flow);
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

static int on_ring_sample(void *ctx, void *data, size_t size)
{
	struct fe_agent *a = ctx;

	if (size < sizeof(struct fe_flow))
		return 0;
	memcpy(a->dst + a->len, data, sizeof(struct fe_flow));
	a->len += sizeof(struct fe_flow);
	/* Stop after this record, not on the next: libbpf drops a record whose callback fails. */
	return a->len + sizeof(struct fe_flow) > a->cap ? FE_BUFFER_FULL : 0;
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

static bool kernel_has_enum_value(const struct btf *vmlinux, const char *enum_name,
				  const char *value)
{
	const struct btf_type *t;
	const struct btf_enum *e;
	int id, i;

	id = vmlinux ? btf__find_by_name_kind(vmlinux, enum_name, BTF_KIND_ENUM) : -1;
	if (id <= 0)
		return false;
	t = btf__type_by_id(vmlinux, id);
	e = btf_enum(t);
	for (i = 0; i < btf_vlen(t); i++, e++)
		if (!strcmp(btf__name_by_offset(vmlinux, e->name_off), value))
			return true;
	return false;
}

static int seed_existing(struct fe_agent *a)
{
	struct bpf_link *link;
	char buf[256];
	int fd, err = 0;

	link = bpf_program__attach_iter(a->skel->progs.seed_flows, NULL);
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

static struct bpf_link *attach(struct bpf_program *prog)
{
	return bpf_program__autoload(prog) ? bpf_program__attach(prog) : NULL;
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

FE_API void fe_close(struct fe_agent *a);

/*
 * Opens, loads and attaches the BPF side and seeds already-open sockets.
 * pin_dir: bpffs directory for the identity maps (must exist, 0700).
 * ring_bytes: ring buffer size (power of two, multiple of the page size).
 * flows_max: capacity of the per-socket state map.
 * wakeup_bytes: data waiting before the kernel wakes the reader.
 * On success stores the handle in *out and returns 0; on failure returns
 * -errno and fe_log_read() tells why.
 */
FE_API int fe_open(const char *pin_dir, uint32_t options, uint32_t ring_bytes, uint32_t flows_max,
		   uint32_t wakeup_bytes, struct fe_agent **out)
{
	LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = pin_dir);
	struct btf *vmlinux = NULL;
	struct fe_agent *a;
	bool perf, seed;
	int err;

	*out = NULL;
	log_len = 0;
	log_buf[0] = 0;
	log_verbose = options & FE_OPT_VERBOSE;
	libbpf_set_print(on_libbpf_print);

	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux) {
		err = -errno;
		goto cleanup;
	}
	a->skel = flowexporter_bpf__open_opts(&open_opts);
	if (!a->skel) {
		err = -errno;
		goto cleanup;
	}

	perf = (options & FE_OPT_PERF_BUFFER) ||
	       libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, NULL) != 1;
	a->classic = (options & FE_OPT_CLASSIC_TRACEPOINT) ||
		     !kernel_has_type(vmlinux, "btf_trace_inet_sock_set_state", BTF_KIND_TYPEDEF);
	a->boot_clock = kernel_has_enum_value(vmlinux, "bpf_func_id", "BPF_FUNC_ktime_get_boot_ns");
	seed = !(options & FE_OPT_NO_SEED) &&
	       kernel_has_type(vmlinux, "bpf_iter__tcp", BTF_KIND_STRUCT);
	a->seeded = seed ? 0 : -1;

	a->skel->rodata->use_ringbuf = !perf;
	a->skel->rodata->use_boot_clock = a->boot_clock;
	/* A threshold the ring can never reach would leave draining to the timer alone. */
	a->skel->rodata->wakeup_bytes = wakeup_bytes < ring_bytes / 4 ? wakeup_bytes : ring_bytes / 4;
	bpf_map__set_max_entries(a->skel->maps.flows, flows_max);
	if (perf) {
		/* max_entries 0: libbpf sizes a perf event array to the CPU count. */
		bpf_map__set_type(a->skel->maps.events, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
		bpf_map__set_key_size(a->skel->maps.events, sizeof(int));
		bpf_map__set_value_size(a->skel->maps.events, sizeof(int));
		bpf_map__set_max_entries(a->skel->maps.events, 0);
	} else {
		bpf_map__set_max_entries(a->skel->maps.events, ring_bytes);
	}
	bpf_program__set_autoload(a->skel->progs.on_state_btf, !a->classic);
	bpf_program__set_autoload(a->skel->progs.on_destroy_btf, !a->classic);
	bpf_program__set_autoload(a->skel->progs.on_state_tp, a->classic);
	/*
	 * The classic destroy program runs beside the BTF one as a second net: it
	 * is skipped under a different recursion guard (bpf_prog_active, not the
	 * program's own), so a destroy that nests on a CPU reaches one of the two.
	 */
	bpf_program__set_autoload(a->skel->progs.on_destroy_tp, true);
	bpf_program__set_autoload(a->skel->progs.seed_flows, seed);

	err = load_unsignalled(a->skel);
	if (err)
		goto cleanup;

	/* Attach before seeding so no socket falls between the two. */
	a->skel->links.on_state_btf = attach(a->skel->progs.on_state_btf);
	a->skel->links.on_state_tp = attach(a->skel->progs.on_state_tp);
	if (!a->skel->links.on_state_btf && !a->skel->links.on_state_tp) {
		err = -errno;
		goto cleanup;
	}
	a->skel->links.on_destroy_btf = attach(a->skel->progs.on_destroy_btf);
	a->skel->links.on_destroy_tp = attach(a->skel->progs.on_destroy_tp);
	if (!a->skel->links.on_destroy_btf && !a->skel->links.on_destroy_tp) {
		err = -errno;
		goto cleanup;
	}
	if (seed) {
		/* Seeding is best effort: an unseeded socket still yields a record at close. */
		a->seeded = seed_existing(a) < 0 ? -1 : (int64_t)a->skel->bss->seeded;
	}

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
			err = -errno;
			goto cleanup;
		}
	} else {
		a->rb = ring_buffer__new(bpf_map__fd(a->skel->maps.events), on_ring_sample, a, NULL);
		if (!a->rb) {
			err = -errno;
			goto cleanup;
		}
	}
	*out = a;
	a = NULL;
cleanup:
	btf__free(vmlinux);
	if (a)
		fe_close(a);
	return err;
}

/*
 * Copies closed-flow records into buf (cap bytes; a multiple of
 * fe_record_size() fills best), waiting up to timeout_ms for the kernel to
 * wake the reader, then draining what is there regardless: the kernel side
 * wakes the reader only past a fill threshold. Returns bytes written.
 */
FE_API int fe_poll(struct fe_agent *a, int timeout_ms, uint8_t *buf, uint32_t cap)
{
	size_t n;
	int err;

	a->dst = buf;
	a->cap = cap;
	a->len = 0;
	if (cap < sizeof(struct fe_flow))
		return -EINVAL;
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

	if (a->rb) {
		err = ring_buffer__poll(a->rb, timeout_ms);
		if (err >= 0)
			err = ring_buffer__consume(a->rb);
	} else {
		err = perf_buffer__poll(a->pb, timeout_ms);
		if (err >= 0)
			err = perf_buffer__consume(a->pb);
	}
	if (err < 0 && err != FE_BUFFER_FULL && err != -EINTR)
		return err;
	return a->len;
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

/* Fills out[0..n) with FE_STAT_* values; returns how many it filled. */
FE_API int fe_stats(struct fe_agent *a, uint64_t *out, uint32_t n)
{
	uint64_t s[FE_STAT_COUNT];

	s[FE_STAT_KERNEL_DROPS] = sum_percpu(bpf_map__fd(a->skel->maps.drops), FE_DROP_OUTPUT);
	s[FE_STAT_RECURSION_MISSES] = recursion_misses(a->skel->progs.on_state_btf) +
				      recursion_misses(a->skel->progs.on_state_tp) +
				      recursion_misses(a->skel->progs.on_destroy_btf) +
				      recursion_misses(a->skel->progs.on_destroy_tp);
	s[FE_STAT_PERF_LOST] = a->perf_lost;
	s[FE_STAT_FLOWS_MAX] = bpf_map__max_entries(a->skel->maps.flows);
	s[FE_STAT_TRANSPORT] = a->pb ? 1 : 0;
	s[FE_STAT_ATTACH] = a->classic ? 1 : 0;
	s[FE_STAT_CLOCK] = a->boot_clock ? 0 : 1;
	s[FE_STAT_SEEDED] = (uint64_t)a->seeded;
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

FE_API void fe_close(struct fe_agent *a)
{
	if (!a)
		return;
	ring_buffer__free(a->rb);
	perf_buffer__free(a->pb);
	flowexporter_bpf__destroy(a->skel);
	free(a->spill);
	free(a);
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
