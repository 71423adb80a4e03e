// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * churn: many short TCP connections on loopback, for the capture benchmark.
 *
 * Server threads listen on every (address, port) of a small grid with
 * SO_REUSEPORT, accept and close at once: the server closes first, so its
 * sockets go FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT and the client's go
 * CLOSE_WAIT -> LAST_ACK -> CLOSE. Client threads keep up to --concurrency
 * non-blocking connects in flight each, read the EOF, close, and open the
 * next one, round robin over the grid (flat out, or paced to --rate).
 *
 * TIME_WAIT sits on the server side. Clients do not bind, so the kernel may
 * hand out an ephemeral port again as soon as the client socket is gone; a
 * SYN that meets the server's TIME_WAIT entry of the same 4-tuple is accepted
 * (timestamps increase). Spreading connections over many destinations keeps
 * such reuse rare. 4-tuples still repeat within a run: never key flows on them.
 *
 * Prints one JSON line on stdout at the end:
 *   {"connections":N,"errors":E,"abandoned":A,"accepted":S,"sockets_closed":N+E+A+S,
 *    "seconds":T,"rate":N/T,...}
 * sockets_closed counts the local TCP sockets that went through a state change
 * to CLOSE: every client socket that started a connect, and every accepted one.
 *
 * Build: gcc -O2 -Wall -pthread bench/churn.c -o build/churn
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DESTS 4096
#define DRAIN_TIMEOUT_S 5.0

struct config {
	int clients;
	int servers;
	int concurrency;
	double duration_s;
	double rate; /* connections/s over all clients; 0 = flat out */
	struct in_addr first_addr;
	int addrs;
	int port_base;
	int ports;
};

struct client {
	pthread_t thread;
	int index;
	uint64_t connections; /* read EOF: the server closed first, as designed */
	uint64_t errors;      /* the connect failed after the SYN (refused, reset, timed out) */
	uint64_t unsent;      /* connect() failed before a SYN (no port): no state change */
	uint64_t abandoned;   /* still in flight when the drain timed out */
};

struct server {
	pthread_t thread;
	int epfd;
	int *listeners;
	int nlisteners;
	uint64_t accepted;
};

static struct config cfg = {
	.clients = 2,
	.servers = 2,
	.concurrency = 64,
	.duration_s = 5,
	.rate = 0,
	.addrs = 8,
	.port_base = 20000,
	.ports = 4,
};
static struct sockaddr_in dests[MAX_DESTS];
static int ndests;
static atomic_bool stop_clients;
static atomic_bool stop_servers;
static double t_start;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "churn: %s: %s\n", what, strerror(err));
	exit(1);
}

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop_clients, true);
}

/* Starts a non-blocking connect; returns the socket, or -1 when no SYN went out. */
static int start_connect(int epfd, const struct sockaddr_in *dst, struct client *c)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("cannot create a client socket (raise the open file limit)", errno);
	if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) < 0 && errno != EINPROGRESS) {
		/* Non-blocking connects report every post-SYN error later, through the socket. */
		c->unsent++;
		close(fd);
		return -1;
	}
	ev.data.fd = fd;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("cannot watch a client socket", errno);
	return fd;
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	int per_thread = cfg.concurrency;
	double rate = cfg.rate / cfg.clients; /* this thread's share */
	struct epoll_event events[256];
	uint64_t started = 0;
	int in_flight = 0;
	int next = c->index * (ndests / cfg.clients + 1) % ndests;
	double drain_deadline = 0;
	char byte;
	int epfd = epoll_create1(EPOLL_CLOEXEC);

	if (epfd < 0)
		die("cannot create an epoll instance", errno);
	for (;;) {
		bool stopping = atomic_load(&stop_clients);
		int timeout_ms = 100;

		if (stopping) {
			if (in_flight == 0)
				break;
			if (drain_deadline == 0)
				drain_deadline = now_s() + DRAIN_TIMEOUT_S;
			else if (now_s() > drain_deadline)
				break;
		} else {
			double allowed = rate > 0 ? rate * (now_s() - t_start) : 1e18;

			while (in_flight < per_thread && started < allowed) {
				started++;
				if (start_connect(epfd, &dests[next], c) >= 0)
					in_flight++;
				next = (next + 1) % ndests;
			}
			if (rate > 0 && in_flight < per_thread)
				timeout_ms = 1; /* pacing: come back for the next slot */
		}
		int n = epoll_wait(epfd, events, 256, in_flight ? timeout_ms : (stopping ? 0 : 1));

		if (n < 0 && errno != EINTR)
			die("cannot wait for client sockets", errno);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			ssize_t r = read(fd, &byte, 1);

			if (r < 0 && errno == EAGAIN)
				continue; /* connected, the FIN is still on its way */
			if (r == 0)
				c->connections++;
			else
				c->errors++;
			close(fd); /* also leaves the epoll set */
			in_flight--;
		}
	}
	c->abandoned = in_flight;
	close(epfd); /* abandoned sockets close with the process */
	return NULL;
}

static int listen_on(const struct sockaddr_in *addr)
{
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	char what[96];

	if (fd < 0)
		die("cannot create a listening socket", errno);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		die("cannot set SO_REUSEADDR/SO_REUSEPORT", errno);
	if (bind(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 4096) < 0) {
		snprintf(what, sizeof(what), "cannot listen on %s:%d (pick another --port-base)",
			 inet_ntoa(addr->sin_addr), ntohs(addr->sin_port));
		die(what, errno);
	}
	return fd;
}

static void *server_main(void *arg)
{
	struct server *s = arg;
	struct epoll_event events[64];

	while (!atomic_load(&stop_servers)) {
		int n = epoll_wait(s->epfd, events, 64, 50);

		if (n < 0 && errno != EINTR)
			die("cannot wait for listening sockets", errno);
		for (int i = 0; i < n; i++) {
			int fd;

			while ((fd = accept4(events[i].data.fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
				close(fd); /* the server closes first */
				s->accepted++;
			}
			if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR)
				die("cannot accept", errno);
		}
	}
	return NULL;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: churn [options]\n"
		"  --clients N        client threads (default %d)\n"
		"  --servers N        server threads, one SO_REUSEPORT listener set each (default %d)\n"
		"  --concurrency N    connections in flight per client thread (default %d)\n"
		"  --duration S       seconds of churn (default %g)\n"
		"  --rate R           connections/s over all clients, 0 = flat out (default 0)\n"
		"  --first-addr A     first destination address, 127.x.y.z (default 127.77.0.1)\n"
		"  --addrs N          destination addresses counting up from --first-addr (default %d)\n"
		"  --port-base P      first listening port (default %d)\n"
		"  --ports N          listening ports per address (default %d)\n",
		cfg.clients, cfg.servers, cfg.concurrency, cfg.duration_s, cfg.addrs, cfg.port_base,
		cfg.ports);
}

static long parse_num(const char *flag, const char *value, double min, double max, double *out)
{
	char *end;
	double v = strtod(value, &end);

	if (*value == '\0' || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "churn: invalid %s \"%s\": expected a number from %g to %g\n", flag,
			value, min, max);
		exit(2);
	}
	*out = v;
	return (long)v;
}

static void parse_args(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "clients", required_argument, NULL, 'c' },
		{ "servers", required_argument, NULL, 's' },
		{ "concurrency", required_argument, NULL, 'n' },
		{ "duration", required_argument, NULL, 'd' },
		{ "rate", required_argument, NULL, 'r' },
		{ "first-addr", required_argument, NULL, 'a' },
		{ "addrs", required_argument, NULL, 'A' },
		{ "port-base", required_argument, NULL, 'p' },
		{ "ports", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	double v;
	int opt;

	inet_pton(AF_INET, "127.77.0.1", &cfg.first_addr);
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': cfg.clients = parse_num("--clients", optarg, 1, 64, &v); break;
		case 's': cfg.servers = parse_num("--servers", optarg, 1, 64, &v); break;
		case 'n': cfg.concurrency = parse_num("--concurrency", optarg, 1, 10000, &v); break;
		case 'd': parse_num("--duration", optarg, 0.1, 3600, &cfg.duration_s); break;
		case 'r': parse_num("--rate", optarg, 0, 1e8, &cfg.rate); break;
		case 'a':
			if (inet_pton(AF_INET, optarg, &cfg.first_addr) != 1 ||
			    (ntohl(cfg.first_addr.s_addr) >> 24) != 127) {
				fprintf(stderr, "churn: invalid --first-addr \"%s\": expected 127.x.y.z\n",
					optarg);
				exit(2);
			}
			break;
		case 'A': cfg.addrs = parse_num("--addrs", optarg, 1, 256, &v); break;
		case 'p': cfg.port_base = parse_num("--port-base", optarg, 1, 65535, &v); break;
		case 'P': cfg.ports = parse_num("--ports", optarg, 1, 64, &v); break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (cfg.port_base + cfg.ports - 1 > 65535) {
		fprintf(stderr, "churn: invalid --port-base %d with --ports %d: ports end past 65535\n",
			cfg.port_base, cfg.ports);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	struct rlimit nofile;
	struct sigaction sa = { .sa_handler = on_signal };
	struct client *clients;
	struct server *servers;
	uint64_t connections = 0, errors = 0, unsent = 0, abandoned = 0, accepted = 0;
	double seconds;
	char first[INET_ADDRSTRLEN];

	parse_args(argc, argv);
	/* In-flight sockets plus listeners; ask for the hard limit. */
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	ndests = cfg.addrs * cfg.ports;
	for (int a = 0; a < cfg.addrs; a++) {
		for (int p = 0; p < cfg.ports; p++) {
			struct sockaddr_in *d = &dests[a * cfg.ports + p];

			d->sin_family = AF_INET;
			d->sin_addr.s_addr = htonl(ntohl(cfg.first_addr.s_addr) + a);
			d->sin_port = htons(cfg.port_base + p);
		}
	}

	servers = calloc(cfg.servers, sizeof(*servers));
	clients = calloc(cfg.clients, sizeof(*clients));
	if (!servers || !clients)
		die("cannot allocate thread state", ENOMEM);
	for (int i = 0; i < cfg.servers; i++) {
		struct server *s = &servers[i];

		s->epfd = epoll_create1(EPOLL_CLOEXEC);
		s->listeners = calloc(ndests, sizeof(int));
		if (s->epfd < 0 || !s->listeners)
			die("cannot set up a server thread", errno);
		for (int d = 0; d < ndests; d++) {
			struct epoll_event ev = { .events = EPOLLIN };

			s->listeners[d] = ev.data.fd = listen_on(&dests[d]);
			if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, ev.data.fd, &ev) < 0)
				die("cannot watch a listening socket", errno);
		}
		s->nlisteners = ndests;
		if ((errno = pthread_create(&s->thread, NULL, server_main, s)))
			die("cannot start a server thread", errno);
	}

	t_start = now_s();
	for (int i = 0; i < cfg.clients; i++) {
		clients[i].index = i;
		if ((errno = pthread_create(&clients[i].thread, NULL, client_main, &clients[i])))
			die("cannot start a client thread", errno);
	}
	/* Sleep out the duration; a signal ends it early. */
	while (!atomic_load(&stop_clients) && now_s() - t_start < cfg.duration_s)
		usleep(10000);
	atomic_store(&stop_clients, true);
	for (int i = 0; i < cfg.clients; i++) {
		pthread_join(clients[i].thread, NULL);
		connections += clients[i].connections;
		errors += clients[i].errors;
		unsent += clients[i].unsent;
		abandoned += clients[i].abandoned;
	}
	seconds = now_s() - t_start;
	/* Every completed connection was accepted: the servers can stop now. */
	atomic_store(&stop_servers, true);
	for (int i = 0; i < cfg.servers; i++) {
		pthread_join(servers[i].thread, NULL);
		accepted += servers[i].accepted;
		for (int d = 0; d < servers[i].nlisteners; d++)
			close(servers[i].listeners[d]);
		close(servers[i].epfd);
	}

	inet_ntop(AF_INET, &cfg.first_addr, first, sizeof(first));
	printf("{\"connections\":%lu,\"errors\":%lu,\"unsent\":%lu,\"abandoned\":%lu,"
	       "\"accepted\":%lu,\"sockets_closed\":%lu,\"seconds\":%.6f,\"rate\":%.1f,\"clients\":%d,"
	       "\"servers\":%d,\"concurrency\":%d,\"target_rate\":%.0f,\"first_addr\":\"%s\","
	       "\"addrs\":%d,\"port_base\":%d,\"ports\":%d}\n",
	       connections, errors, unsent, abandoned, accepted, connections + errors + abandoned + accepted,
	       seconds, connections / seconds, cfg.clients, cfg.servers, cfg.concurrency, cfg.rate,
	       first, cfg.addrs, cfg.port_base, cfg.ports);
	return 0;
}
