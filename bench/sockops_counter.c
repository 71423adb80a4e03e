// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * sockops_counter CGROUP: loads bench/sockops_counter.bpf.c (embedded through
 * its skeleton) and attaches it to the cgroup v2 directory CGROUP (the root,
 * for every process's sockets). Prints "Attaching ..." once attached; at
 * SIGINT or SIGTERM, prints "@closes: N" (the line bpftrace's count() prints,
 * which the benchmark reads) and exits. The attachment is a BPF link held by
 * this process: it goes when the process does, killed or not.
 *
 * Build: make build/sockops_counter
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "sockops_counter.skel.h"

static volatile sig_atomic_t stopping;

static void on_stop(int sig)
{
	(void)sig;
	stopping = 1;
}

/* The per-CPU counts summed; -1 when the map cannot be read. */
static long long total_closes(const struct sockops_counter_bpf *skel)
{
	int cpus = libbpf_num_possible_cpus();
	unsigned long long sum = 0;
	__u32 zero = 0;
	__u64 *counts;

	if (cpus <= 0 || !(counts = calloc(cpus, sizeof(*counts))))
		return -1;
	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.closes), &zero, counts)) {
		free(counts);
		return -1;
	}
	for (int i = 0; i < cpus; i++)
		sum += counts[i];
	free(counts);
	return (long long)sum;
}

int main(int argc, char **argv)
{
	struct sigaction stop = { .sa_handler = on_stop };
	struct sockops_counter_bpf *skel = NULL;
	struct bpf_link *link = NULL;
	sigset_t blocked, waiting;
	int cgroup = -1, status = 1;
	long long closes;

	/* Blocked until sigsuspend(): a signal before it is not lost. */
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGINT);
	sigaddset(&blocked, SIGTERM);
	sigprocmask(SIG_BLOCK, &blocked, &waiting);
	sigaction(SIGINT, &stop, NULL);
	sigaction(SIGTERM, &stop, NULL);

	if (argc != 2) {
		fprintf(stderr, "usage: sockops_counter CGROUP (a cgroup v2 directory)\n");
		return 2;
	}
	cgroup = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (cgroup < 0) {
		fprintf(stderr, "sockops_counter: cannot open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	skel = sockops_counter_bpf__open_and_load();
	if (!skel) {
		fprintf(stderr, "sockops_counter: cannot load the program: %s\n", strerror(errno));
		goto out;
	}
	link = bpf_program__attach_cgroup(skel->progs.count_closes, cgroup);
	if (!link) {
		fprintf(stderr, "sockops_counter: cannot attach at %s: %s\n", argv[1], strerror(errno));
		goto out;
	}
	printf("Attaching 1 sock_ops program at %s\n", argv[1]);
	fflush(stdout);
	while (!stopping)
		sigsuspend(&waiting);
	closes = total_closes(skel);
	if (closes < 0) {
		fprintf(stderr, "sockops_counter: cannot read the count: %s\n", strerror(errno));
		goto out;
	}
	printf("@closes: %lld\n", closes);
	status = 0;
out:
	bpf_link__destroy(link);
	sockops_counter_bpf__destroy(skel);
	close(cgroup);
	return status;
}
