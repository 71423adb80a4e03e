// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * hold_connections: many idle established TCP connections on loopback, held
 * open, for the interim-record benchmark (bench/interim_bench.ts).
 *
 * Listens on --ports ports (picked by the kernel) of --addr, connects
 * --connections clients round robin over them in batches that fit the
 * listeners' backlogs, accepts each batch, and prints one line on stdout:
 *   {"connections":N,"ports":[p1,...],"seconds":T}
 * Clients do not bind: the kernel reuses an ephemeral port towards another
 * listener port, so 28 000 ephemeral ports serve ports * 28 000 connections.
 * Each connection takes two descriptors: past RLIMIT_NOFILE's hard limit it
 * refuses, and the benchmark runs several holders.
 * Then it waits until stdin ends (or a SIGTERM) and closes everything: the
 * clients with an RST (SO_LINGER 0), so that no TIME_WAIT sockets are left.
 *
 * Build: gcc -O2 -Wall -Wextra bench/hold_connections.c -o build/hold_connections
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 256
#define BACKLOG 4096

static void die(const char *what)
{
	fprintf(stderr, "hold_connections: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "ports", required_argument, NULL, 'p' },
		{ "connections", required_argument, NULL, 'n' },
		{ 0 },
	};
	struct sockaddr_in addr = { .sin_family = AF_INET };
	int listeners[MAX_PORTS], ports = 16, n = 10000, opt, i, done;
	unsigned short port[MAX_PORTS];
	int *clients, *servers;
	struct rlimit lim;
	char buf[64];
	double start;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'a':
			if (inet_pton(AF_INET, optarg, &addr.sin_addr) != 1) {
				fprintf(stderr, "hold_connections: --addr %s is no IPv4 address\n", optarg);
				return 2;
			}
			break;
		case 'p':
			ports = atoi(optarg);
			break;
		case 'n':
			n = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: hold_connections [--addr A] [--ports P] [--connections N]\n");
			return 2;
		}
	}
	if (ports < 1 || ports > MAX_PORTS || n < 1) {
		fprintf(stderr, "hold_connections: --ports must be 1..%d, --connections at least 1\n",
			MAX_PORTS);
		return 2;
	}
	if (getrlimit(RLIMIT_NOFILE, &lim))
		die("read RLIMIT_NOFILE");
	if (2 * (rlim_t)n + ports + 64 > lim.rlim_max) {
		fprintf(stderr,
			"hold_connections: %d connections need %d descriptors, the hard limit is %llu: "
			"hold fewer per process\n",
			n, 2 * n + ports + 64, (unsigned long long)lim.rlim_max);
		return 2;
	}
	lim.rlim_cur = 2 * (rlim_t)n + ports + 64;
	if (setrlimit(RLIMIT_NOFILE, &lim))
		die("raise RLIMIT_NOFILE");
	clients = calloc(n, sizeof(*clients));
	servers = calloc(n, sizeof(*servers));
	if (!clients || !servers)
		die("allocate");

	for (i = 0; i < ports; i++) {
		struct sockaddr_in bound;
		socklen_t len = sizeof(bound);

		addr.sin_port = 0;
		listeners[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (listeners[i] < 0 || bind(listeners[i], (struct sockaddr *)&addr, sizeof(addr)) ||
		    listen(listeners[i], BACKLOG) ||
		    getsockname(listeners[i], (struct sockaddr *)&bound, &len))
			die("listen");
		port[i] = ntohs(bound.sin_port);
	}

	start = now_s();
	/* A batch never exceeds what the listeners queue: a full queue drops SYNs, which retry in 1 s. */
	for (done = 0; done < n;) {
		int batch = n - done < ports * (BACKLOG / 2) ? n - done : ports * (BACKLOG / 2);

		for (i = done; i < done + batch; i++) {
			addr.sin_port = htons(port[i % ports]);
			clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (clients[i] < 0 || connect(clients[i], (struct sockaddr *)&addr, sizeof(addr)))
				die("connect");
		}
		for (i = done; i < done + batch; i++) {
			servers[i] = accept4(listeners[i % ports], NULL, NULL, SOCK_CLOEXEC);
			if (servers[i] < 0)
				die("accept");
		}
		done += batch;
	}

	printf("{\"connections\":%d,\"ports\":[", n);
	for (i = 0; i < ports; i++)
		printf("%s%u", i ? "," : "", port[i]);
	printf("],\"seconds\":%.3f}\n", now_s() - start);
	fflush(stdout);

	while (read(STDIN_FILENO, buf, sizeof(buf)) > 0)
		;
	for (i = 0; i < n; i++) {
		struct linger rst = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(clients[i], SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
		close(clients[i]);
		close(servers[i]);
	}
	for (i = 0; i < ports; i++)
		close(listeners[i]);
	return 0;
}
