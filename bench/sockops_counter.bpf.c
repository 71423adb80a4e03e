// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The least a tracer that follows every TCP close through sock_ops does: ask
 * for a socket's state callbacks where the agent's on_sockops asks for them
 * (connect, either end of the handshake), and count its closes, listeners
 * left out. No state, no record: what it costs the churn is the floor of
 * flowexporter's design (bench/churn_bench.ts, tool `sockops`).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Per CPU, like bpftrace's count(): the two CPUs never share the line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} closes SEC(".maps");

SEC("sockops")
int count_closes(struct bpf_sock_ops *skops)
{
	__u32 zero = 0;
	__u64 *n;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops,
					  skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE || skops->args[0] == BPF_TCP_LISTEN)
			break;
		n = bpf_map_lookup_elem(&closes, &zero);
		if (n)
			*n += 1;
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
