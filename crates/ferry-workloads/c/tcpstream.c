/*
 * tcpstream MODE [MB]: continuous TCP streams in both directions across a checkpoint
 * (dump --tcp-established), checked byte by byte.
 *   pair: both ends in the process: C connected to a listener, A accepted; C and A stream to
 *         each other at once (non-blocking, one poll loop), so at the checkpoint both queues of
 *         both sockets are full or moving.
 *   peer: the peer is outside the tree (the test): the process listens, writes W/port, accepts
 *         one connection X, and streams with it both ways.
 *   netpeer: as peer, listening on every address (the test reaches it through a link into
 *         the process's own network namespace).
 *   procs: both ends in the tree, with blocking I/O in four child processes sharing the two
 *         sockets: one writes A, one reads C, one writes C, one reads A (1 MiB write()s, so
 *         the checkpoint finds writers in the middle of a write that copied part of its
 *         buffer). Each writes its byte count to W/<name> when done (sent_A, recv_C, ...); the
 *         parent, which forwards go to them, compares the counts.
 * Every direction carries a fixed pattern: the 8-byte block k holds k * 0x9E3779B97F4A7C15 ^ SALT
 * (a different salt per direction), so a byte lost, duplicated or reordered anywhere shifts
 * everything after it and is caught at its offset. The process streams until each direction
 * moved 16 MiB, writes ready, and keeps streaming while it is checkpointed. After go each
 * direction it sends moves MB (default 100) MiB more, then is shut down for writing (pair) and
 * the ends read until EOF: every received byte must match the pattern at its offset, and each
 * direction must deliver exactly the byte count its sender wrote. In peer mode the process
 * shuts its writing side after its MB MiB, reads until the test's EOF, and writes
 * W/counts ("sent S received R") for the test, which checks its own direction the same way.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SALT_A 0x5151a5a5c3c3e7e7ULL /* A -> C, and process -> test in peer mode */
#define SALT_C 0x0f1e2d3c4b5a6978ULL /* C -> A, and test -> process in peer mode */
#define MIB (1024ULL * 1024ULL)

static inline uint8_t pattern(uint64_t off, uint64_t salt)
{
	uint64_t w = (off >> 3) * 0x9E3779B97F4A7C15ULL ^ salt;
	return (uint8_t)(w >> (8 * (off & 7)));
}

static void fill(unsigned char *buf, size_t len, uint64_t off, uint64_t salt)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern(off + i, salt);
}

struct end {
	const char *name;
	int fd;
	uint64_t send_salt, recv_salt;
	uint64_t sent, recvd;
	uint64_t limit; /* stop sending (and shut down for writing) here */
	int shut, eof, bad;
};

static unsigned char sbuf[256 * 1024], rbuf[256 * 1024];

/* One round of I/O on `e` as poll reported it; returns 1 when something moved. */
static int step(struct end *e, short revents)
{
	int moved = 0;
	if ((revents & (POLLIN | POLLHUP | POLLERR)) && !e->eof) {
		ssize_t n = recv(e->fd, rbuf, sizeof rbuf, MSG_DONTWAIT);
		if (n > 0) {
			if (!e->bad)
				for (ssize_t i = 0; i < n; i++)
					if (rbuf[i] != pattern(e->recvd + (uint64_t)i, e->recv_salt)) {
						fail("%s: received byte %llu is %#x, want %#x (a byte lost or duplicated before it)",
						     e->name, (unsigned long long)(e->recvd + (uint64_t)i), rbuf[i],
						     pattern(e->recvd + (uint64_t)i, e->recv_salt));
						e->bad = 1;
						break;
					}
			e->recvd += (uint64_t)n;
			moved = 1;
		} else if (n == 0) {
			e->eof = 1;
			moved = 1;
		} else if (errno != EAGAIN && errno != EINTR) {
			fail("%s: recv after %llu bytes: %s", e->name, (unsigned long long)e->recvd, strerror(errno));
			e->eof = e->bad = 1;
		}
	}
	if ((revents & POLLOUT) && !e->shut) {
		uint64_t left = e->limit - e->sent;
		size_t len = left < sizeof sbuf ? (size_t)left : sizeof sbuf;
		if (len > 0) {
			fill(sbuf, len, e->sent, e->send_salt);
			ssize_t n = send(e->fd, sbuf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0) {
				e->sent += (uint64_t)n;
				moved = 1;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				fail("%s: send after %llu bytes: %s", e->name, (unsigned long long)e->sent, strerror(errno));
				e->shut = 1;
				e->eof = e->bad = 1;
			}
		}
		if (e->sent == e->limit && !e->shut) {
			CHECK(shutdown(e->fd, SHUT_WR) == 0, "%s: shutdown: %s", e->name, strerror(errno));
			e->shut = 1;
			moved = 1;
		}
	}
	return moved;
}

/* Stream on every end until `until` says stop (or the ends are done); fails after 120 s
 * without progress. */
static void run(struct end *ends, int n, int (*until)(struct end *, int))
{
	time_t last = time(NULL);
	while (!until(ends, n)) {
		struct pollfd p[2];
		for (int i = 0; i < n; i++) {
			p[i].fd = ends[i].fd;
			p[i].events = (short)((ends[i].eof ? 0 : POLLIN) | (ends[i].shut ? 0 : POLLOUT));
			p[i].revents = 0;
		}
		int r = poll(p, (nfds_t)n, 1000);
		if (r < 0 && errno != EINTR) {
			fail("poll: %s", strerror(errno));
			return;
		}
		int moved = 0;
		for (int i = 0; i < n && r > 0; i++)
			moved |= step(&ends[i], p[i].revents);
		if (moved)
			last = time(NULL);
		else if (time(NULL) - last > 120) {
			for (int i = 0; i < n; i++)
				fail("%s: stalled for 120 s: sent %llu (limit %llu), received %llu, eof %d", ends[i].name,
				     (unsigned long long)ends[i].sent, (unsigned long long)ends[i].limit,
				     (unsigned long long)ends[i].recvd, ends[i].eof);
			return;
		}
	}
}

static int warmed_up(struct end *e, int n)
{
	for (int i = 0; i < n; i++)
		if (e[i].sent < 16 * MIB || e[i].recvd < 16 * MIB)
			return 0;
	return 1;
}

static int until_go(struct end *e, int n)
{
	(void)e;
	(void)n;
	return go;
}

static int all_done(struct end *e, int n)
{
	for (int i = 0; i < n; i++)
		if (!e[i].eof || !e[i].shut)
			return 0;
	return 1;
}

/* procs mode: one child writing the pattern `salt` to `fd` in 1 MiB write()s until go, then
 * `more` bytes more, then SHUT_WR; its count goes to W/name. */
static void writer(const char *name, int fd, uint64_t salt, uint64_t more)
{
	static unsigned char buf[1 << 20];
	uint64_t sent = 0, limit = UINT64_MAX;
	for (;;) {
		if (go && limit == UINT64_MAX)
			limit = sent + more;
		if (sent >= limit)
			break;
		uint64_t left = limit - sent;
		size_t len = left < sizeof buf ? (size_t)left : sizeof buf;
		fill(buf, len, sent, salt);
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fail("%s: write after %llu bytes: %s", name, (unsigned long long)sent, strerror(errno));
			finish();
		}
		sent += (uint64_t)n;
	}
	CHECK(shutdown(fd, SHUT_WR) == 0, "%s: shutdown: %s", name, strerror(errno));
	char c[32];
	snprintf(c, sizeof c, "%llu\n", (unsigned long long)sent);
	SETUP(write_file_atomic(name, c));
	exit(failures ? 1 : 0);
}

/* procs mode: one child reading `fd` until EOF, checking the pattern `salt`. */
static void reader(const char *name, int fd, uint64_t salt)
{
	uint64_t got = 0;
	for (;;) {
		ssize_t n = read(fd, rbuf, sizeof rbuf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail("%s: read after %llu bytes: %s", name, (unsigned long long)got, strerror(errno));
			exit(1);
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			if (rbuf[i] != pattern(got + (uint64_t)i, salt)) {
				fail("%s: received byte %llu is %#x, want %#x (a byte lost or duplicated before it)", name,
				     (unsigned long long)(got + (uint64_t)i), rbuf[i], pattern(got + (uint64_t)i, salt));
				exit(1);
			}
		got += (uint64_t)n;
	}
	char c[32];
	snprintf(c, sizeof c, "%llu\n", (unsigned long long)got);
	SETUP(write_file_atomic(name, c));
	exit(0);
}

static uint64_t read_count(const char *name)
{
	char path[4096], buf[64];
	snprintf(path, sizeof path, "%s/%s", W, name);
	if (read_file(path, buf, sizeof buf) <= 0) {
		fail("no count in %s", name);
		return 0;
	}
	return strtoull(buf, NULL, 10);
}

static void procs(int a, int c, uint64_t more)
{
	pid_t kids[4];
	for (int k = 0; k < 4; k++) {
		kids[k] = fork();
		SETUP(kids[k]);
		if (kids[k] == 0) {
			switch (k) {
			case 0: writer("sent_A", a, SALT_A, more); break;
			case 1: reader("recv_C", c, SALT_A); break;
			case 2: writer("sent_C", c, SALT_C, more); break;
			default: reader("recv_A", a, SALT_C); break;
			}
		}
	}
	close(a);
	close(c);
	/* Let the streams run before the checkpoint. */
	struct timespec ts = { 0, 300 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	signal_ready();
	wait_go();
	for (int k = 0; k < 4; k++)
		CHECK(kill(kids[k], SIGUSR2) == 0, "kill child %d: %s", (int)kids[k], strerror(errno));
	for (int k = 0; k < 4; k++) {
		int st;
		pid_t r;
		while ((r = waitpid(kids[k], &st, 0)) < 0 && errno == EINTR)
			;
		CHECK(r == kids[k] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed (status %#x), see the log",
		      (int)kids[k], st);
	}
	uint64_t sa = read_count("sent_A"), rc = read_count("recv_C"), sc = read_count("sent_C"), ra = read_count("recv_A");
	fprintf(stderr, "tcpstream: A sent %llu, C received %llu; C sent %llu, A received %llu\n", (unsigned long long)sa,
		(unsigned long long)rc, (unsigned long long)sc, (unsigned long long)ra);
	CHECK(rc == sa, "C received %llu bytes, A sent %llu", (unsigned long long)rc, (unsigned long long)sa);
	CHECK(ra == sc, "A received %llu bytes, C sent %llu", (unsigned long long)ra, (unsigned long long)sc);
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "pair";
	uint64_t more = (argc > 3 ? strtoull(argv[3], NULL, 10) : 100) * MIB;
	int netpeer = strcmp(mode, "netpeer") == 0;
	if (netpeer)
		mode = "peer";
	struct sockaddr_in la = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(netpeer ? INADDR_ANY : INADDR_LOOPBACK) };
	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	SETUP(bind(l, (struct sockaddr *)&la, sizeof la));
	SETUP(listen(l, 8));
	socklen_t len = sizeof la;
	SETUP(getsockname(l, (struct sockaddr *)&la, &len));
	struct end ends[2];
	memset(ends, 0, sizeof ends);
	int n;
	if (strcmp(mode, "procs") == 0) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c);
		SETUP(connect(c, (struct sockaddr *)&la, sizeof la));
		int a = accept(l, NULL, NULL);
		SETUP(a);
		procs(a, c, more);
	}
	if (strcmp(mode, "pair") == 0) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c);
		SETUP(connect(c, (struct sockaddr *)&la, sizeof la));
		int a = accept(l, NULL, NULL);
		SETUP(a);
		ends[0] = (struct end){ .name = "A", .fd = a, .send_salt = SALT_A, .recv_salt = SALT_C };
		ends[1] = (struct end){ .name = "C", .fd = c, .send_salt = SALT_C, .recv_salt = SALT_A };
		n = 2;
	} else if (strcmp(mode, "peer") == 0) {
		char port[32];
		snprintf(port, sizeof port, "%d\n", ntohs(la.sin_port));
		SETUP(write_file_atomic("port", port));
		int x = accept(l, NULL, NULL);
		SETUP(x);
		ends[0] = (struct end){ .name = "X", .fd = x, .send_salt = SALT_A, .recv_salt = SALT_C };
		n = 1;
	} else {
		die_setup("unknown mode %s", mode);
	}
	for (int i = 0; i < n; i++) {
		SETUP(fcntl(ends[i].fd, F_SETFL, O_NONBLOCK));
		ends[i].limit = UINT64_MAX;
	}
	run(ends, n, warmed_up);
	if (failures)
		die_setup("the stream failed before the checkpoint");
	signal_ready();
	run(ends, n, until_go);
	for (int i = 0; i < n; i++) {
		fprintf(stderr, "tcpstream: %s at go: sent %llu, received %llu\n", ends[i].name,
			(unsigned long long)ends[i].sent, (unsigned long long)ends[i].recvd);
		ends[i].limit = ends[i].sent + more;
	}
	run(ends, n, all_done);
	for (int i = 0; i < n; i++)
		fprintf(stderr, "tcpstream: %s: sent %llu, received %llu\n", ends[i].name, (unsigned long long)ends[i].sent,
			(unsigned long long)ends[i].recvd);
	if (n == 2) {
		CHECK(ends[1].recvd == ends[0].sent, "C received %llu bytes, A sent %llu",
		      (unsigned long long)ends[1].recvd, (unsigned long long)ends[0].sent);
		CHECK(ends[0].recvd == ends[1].sent, "A received %llu bytes, C sent %llu",
		      (unsigned long long)ends[0].recvd, (unsigned long long)ends[1].sent);
	} else {
		char counts[128];
		snprintf(counts, sizeof counts, "sent %llu received %llu\n", (unsigned long long)ends[0].sent,
			 (unsigned long long)ends[0].recvd);
		SETUP(write_file_atomic("counts", counts));
	}
	finish();
}
