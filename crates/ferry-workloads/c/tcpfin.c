/*
 * tcpfin FAMILY: TCP connections in the closing states with both FINs, dumped with
 * --tcp-established (FAMILY 4 or 6: IPv4 on 127.0.0.1 or IPv6 on ::1; m: IPv6 sockets on
 * ::ffff:127.0.0.1, IPv4 on the wire).
 *
 * The test drops every segment the listener's port sends (nftables, "tcp sport PORT"), so
 * that the FINs and ACKs the accepted sockets send get lost. Steps:
 *   1. L listens, W/port holds its port; the test connects TX and TY; L accepts them as A3
 *      and A4. C1, C2, C5 connect to L (accepted as A1, A2, A5). W/conns.
 *   2. The test starts dropping and shuts TX down for writing; W/dropping.
 *   3. A3 sees TX's FIN (CLOSE_WAIT) and shuts down: LAST_ACK (peer outside).
 *      A4 shuts down: FIN_WAIT1 (its FIN lost); W/shut4; the test shuts TY down: A4 CLOSING
 *      (peer outside).
 *      C1 shuts down, A1 gets the FIN (CLOSE_WAIT), A1 shuts down: A1 LAST_ACK, C1 FIN_WAIT1
 *      (A1's ACK is lost too).
 *      A2 shuts down (FIN lost), then C2: A2 CLOSING, C2 FIN_WAIT1.
 *      C5 writes "abc" and shuts down: A5 CLOSE_WAIT, C5 FIN_WAIT1.
 *      ready.
 * The test dumps, stops dropping, restores. After go (the FINs and ACKs lost before are
 * sent again by the restored sockets):
 *   A1 and A3 (LAST_ACK) read end of file, cannot write (EPIPE), and reach CLOSE (their FIN
 *   acknowledged: the last ACK arrived); C1 reads end of file once, no reset, and reaches
 *   CLOSE (TIME_WAIT). A2 and A4 (CLOSING) read end of file and reach CLOSE (TIME_WAIT); C2
 *   reads end of file and reaches CLOSE. A5 is in CLOSE_WAIT, reads "abc" then end of file,
 *   writes "xyz", which C5 reads, and C5 reaches FIN_WAIT2. No socket has SO_ERROR set.
 *   (The test checks TX and TY read end of file only after the restore, with no reset.)
 *
 * tcpfin FAMILY syn: connections in SYN_SENT. L listens (W/port); the test listens too (its
 * port in W/tport) and drops every SYN to both ports (nftables), then writes W/dropping. C1
 * connects to L without blocking, a child process blocks in connect() to L (C2), C3 connects
 * to the test's listener without blocking: all in SYN_SENT; ready. The test dumps, stops
 * dropping, restores. After go: the SYNs go out again, C1 becomes writable with SO_ERROR 0
 * and ESTABLISHED, L accepts C1's and C2's connections and both carry bytes both ways (the
 * child's connect() returns 0 after restore); C3 is connected to the test, sends "c3" and
 * reads the test's "t3".
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

enum { ESTABLISHED = 1, SYN_SENT = 2, FIN_WAIT1 = 4, FIN_WAIT2 = 5, CLOSE = 7, CLOSE_WAIT = 8, LAST_ACK = 9, CLOSING = 11 };

static int family = AF_INET;
/* FAMILY "m": IPv6 sockets speaking IPv4 through mapped addresses (::ffff:127.0.0.1). */
static int mapped = 0;

static int tcp_state(int fd)
{
	struct tcp_info info;
	socklen_t len = sizeof info;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
		return -1;
	return info.tcpi_state;
}

static int wait_state(int fd, int want, int ms)
{
	for (int i = 0; i < ms / 10 && tcp_state(fd) != want; i++)
		usleep(10000);
	return tcp_state(fd);
}

static void wait_file(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", W, name);
	for (int i = 0; i < 3000; i++) {
		if (access(path, F_OK) == 0)
			return;
		usleep(10000);
	}
	die_setup("the test did not write %s", name);
}

static socklen_t addr_of(struct sockaddr_storage *ss, uint16_t port)
{
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		if (mapped)
			inet_pton(AF_INET6, "::ffff:127.0.0.1", &a->sin6_addr);
		a->sin6_port = htons(port);
		return sizeof *a;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a->sin_port = htons(port);
	return sizeof *a;
}

static int connect_to(uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr_of(&ss, port);
	int c = socket(family, SOCK_STREAM, 0);
	SETUP(c);
	SETUP(connect(c, (struct sockaddr *)&ss, len));
	return c;
}

/* fd moved to the lowest free fd >= `min` (the old one closed). */
static int move_high(int fd, int min)
{
	int n = fcntl(fd, F_DUPFD, min);
	SETUP(n);
	close(fd);
	return n;
}

static void want_state(const char *name, int fd, int want)
{
	int st = wait_state(fd, want, 5000);
	if (st != want)
		die_setup("%s: TCP state %d, want %d", name, st, want);
}

/* After go: fd reads end of file (within 10 s), with nothing before it and no error. */
static void reads_eof(const char *name, int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 10000) != 1) {
		fail("%s: no end of file within 10 s (TCP state %d)", name, tcp_state(fd));
		return;
	}
	char b[8];
	ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
	CHECK(n == 0, "%s: read returned %zd (%s), want end of file", name, n, n < 0 ? strerror(errno) : "data");
	n = recv(fd, b, sizeof b, MSG_DONTWAIT);
	CHECK(n == 0, "%s: second read returned %zd (%s), want end of file again", name, n,
	      n < 0 ? strerror(errno) : "data");
}

static void no_error(const char *name, int fd)
{
	int err = -1;
	socklen_t len = sizeof err;
	CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "%s: SO_ERROR %d (%s)", name, err,
	      strerror(err));
}

static void reaches(const char *name, int fd, int want)
{
	int st = wait_state(fd, want, 10000);
	CHECK(st == want, "%s: TCP state %d after 10 s, want %d", name, st, want);
}

static int connect_nb(uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr_of(&ss, port);
	int c = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	SETUP(c);
	if (connect(c, (struct sockaddr *)&ss, len) == 0 || errno != EINPROGRESS)
		die_setup("connect to port %u: %s, want EINPROGRESS", port, strerror(errno));
	return c;
}

/* After go: the non-blocking connect of c completes (within 10 s). */
static void completes(const char *name, int c)
{
	struct pollfd p = { .fd = c, .events = POLLOUT };
	if (poll(&p, 1, 10000) != 1) {
		fail("%s: not connected within 10 s (TCP state %d)", name, tcp_state(c));
		return;
	}
	no_error(name, c);
	CHECK(tcp_state(c) == ESTABLISHED, "%s: TCP state %d, want ESTABLISHED", name, tcp_state(c));
}

static void swap_bytes(const char *name, int a, int b)
{
	char buf[8] = { 0 };
	CHECK(write(a, "ping", 4) == 4, "%s: write: %s", name, strerror(errno));
	struct pollfd p = { .fd = b, .events = POLLIN };
	CHECK(poll(&p, 1, 5000) == 1 && read(b, buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0,
	      "%s: the bytes did not arrive", name);
}

static void mode_syn(uint16_t port, int l)
{
	char path[4096], tport_s[32] = { 0 };
	wait_file("dropping");
	snprintf(path, sizeof path, "%s/tport", W);
	FILE *f = fopen(path, "r");
	if (!f || !fgets(tport_s, sizeof tport_s, f))
		die_setup("cannot read %s", path);
	fclose(f);
	uint16_t tport = (uint16_t)atoi(tport_s);
	int c1 = connect_nb(port);
	int c3 = connect_nb(tport);
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		int c2 = socket(family, SOCK_STREAM, 0);
		struct sockaddr_storage ss;
		socklen_t len = addr_of(&ss, port);
		if (c2 < 0 || connect(c2, (struct sockaddr *)&ss, len) < 0)
			_exit(10 + (errno & 0x7f));
		if (write(c2, "c2", 2) != 2)
			_exit(3);
		char b[4];
		if (read(c2, b, 2) != 2 || memcmp(b, "l2", 2) != 0)
			_exit(4);
		_exit(0);
	}
	want_state("C1", c1, SYN_SENT);
	want_state("C3", c3, SYN_SENT);
	usleep(200000); /* the child sits in connect() */
	signal_ready();
	wait_go();
	completes("C1", c1);
	completes("C3", c3);
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	struct sockaddr_storage c1name;
	socklen_t c1len = sizeof c1name;
	getsockname(c1, (struct sockaddr *)&c1name, &c1len);
	int a1 = -1, a2 = -1;
	for (int i = 0; i < 2; i++) {
		struct pollfd p = { .fd = l, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1) {
			fail("L: connection %d did not come within 10 s", i + 1);
			break;
		}
		len = sizeof ss;
		int a = accept(l, (struct sockaddr *)&ss, &len);
		if (a < 0) {
			fail("L: accept: %s", strerror(errno));
			break;
		}
		if (len == c1len && memcmp(&ss, &c1name, len) == 0)
			a1 = a;
		else
			a2 = a;
	}
	CHECK(a1 >= 0, "L: C1's connection did not come");
	if (a1 >= 0) {
		swap_bytes("C1 -> A1", c1, a1);
		swap_bytes("A1 -> C1", a1, c1);
	}
	CHECK(a2 >= 0, "L: the child's connection did not come");
	if (a2 >= 0) {
		char b[4] = { 0 };
		struct pollfd p = { .fd = a2, .events = POLLIN };
		CHECK(poll(&p, 1, 5000) == 1 && read(a2, b, 2) == 2 && memcmp(b, "c2", 2) == 0, "A2: the child's bytes");
		CHECK(write(a2, "l2", 2) == 2, "A2: write");
	}
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "child (blocked in connect): status %#x", st);
	CHECK(write(c3, "c3", 2) == 2, "C3: write: %s", strerror(errno));
	char b[4] = { 0 };
	struct pollfd p = { .fd = c3, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1 && read(c3, b, 2) == 2 && memcmp(b, "t3", 2) == 0, "C3: the test's bytes");
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (argc > 2 && strcmp(argv[2], "6") == 0)
		family = AF_INET6;
	if (argc > 2 && strcmp(argv[2], "m") == 0) {
		family = AF_INET6;
		mapped = 1;
	}

	struct sockaddr_storage ss;
	socklen_t len = addr_of(&ss, 0);
	int l = socket(family, SOCK_STREAM, 0);
	SETUP(l);
	SETUP(bind(l, (struct sockaddr *)&ss, len));
	SETUP(listen(l, 16));
	SETUP(getsockname(l, (struct sockaddr *)&ss, &len));
	uint16_t port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						 : ((struct sockaddr_in *)&ss)->sin_port);
	char buf[32];
	snprintf(buf, sizeof buf, "%u\n", port);
	SETUP(write_file_atomic("port", buf));
	if (argc > 3 && strcmp(argv[3], "syn") == 0)
		mode_syn(port, l);

	int a3 = accept(l, NULL, NULL);
	SETUP(a3);
	int a4 = accept(l, NULL, NULL);
	SETUP(a4);
	int c1 = connect_to(port), a1 = accept(l, NULL, NULL);
	SETUP(a1);
	int c2 = connect_to(port), a2 = accept(l, NULL, NULL);
	SETUP(a2);
	/* C1 and C2 on high fds: their peers A1 (LAST_ACK) and A2 (CLOSING) come first in the
	 * fd table, so a restore that gave them their peer's FIN before C1 and C2 are connected
	 * would have their ACKs meet closed ports (and be reset) where no lock holds them. */
	c1 = move_high(c1, 200);
	c2 = move_high(c2, 201);
	int c5 = connect_to(port), a5 = accept(l, NULL, NULL);
	SETUP(a5);
	SETUP(write_file_atomic("conns", "1\n"));
	wait_file("dropping");

	want_state("A3", a3, CLOSE_WAIT);
	SETUP(shutdown(a3, SHUT_WR));
	want_state("A3", a3, LAST_ACK);
	SETUP(shutdown(a4, SHUT_WR));
	want_state("A4", a4, FIN_WAIT1);
	SETUP(write_file_atomic("shut4", "1\n"));

	SETUP(shutdown(c1, SHUT_WR));
	want_state("A1", a1, CLOSE_WAIT);
	SETUP(shutdown(a1, SHUT_WR));
	want_state("A1", a1, LAST_ACK);
	want_state("C1", c1, FIN_WAIT1);

	SETUP(shutdown(a2, SHUT_WR));
	want_state("A2", a2, FIN_WAIT1);
	SETUP(shutdown(c2, SHUT_WR));
	want_state("A2", a2, CLOSING);
	want_state("C2", c2, FIN_WAIT1);

	SETUP(write(c5, "abc", 3) == 3 ? 0 : -1);
	SETUP(shutdown(c5, SHUT_WR));
	want_state("A5", a5, CLOSE_WAIT);
	want_state("C5", c5, FIN_WAIT1);

	want_state("A4", a4, CLOSING);
	signal_ready();
	wait_go();

	char b[8] = { 0 };
	/* The peer's FIN before anything is sent again: A5 reads the bytes, then end of file. */
	CHECK(tcp_state(a5) == CLOSE_WAIT, "A5: TCP state %d, want CLOSE_WAIT", tcp_state(a5));
	CHECK(read(a5, b, sizeof b) == 3 && memcmp(b, "abc", 3) == 0, "A5: the 3 bytes C5 sent are gone");
	CHECK(read(a5, b, sizeof b) == 0, "A5: no end of file after them");
	CHECK(write(a5, "xyz", 3) == 3, "A5: cannot write after C5's FIN: %s", strerror(errno));
	memset(b, 0, sizeof b);
	CHECK(read(c5, b, sizeof b) == 3 && memcmp(b, "xyz", 3) == 0, "C5: A5's bytes did not arrive");
	reaches("C5", c5, FIN_WAIT2);
	CHECK(write(c5, "no", 2) < 0 && errno == EPIPE, "C5: could write after its shutdown");

	int st = tcp_state(a1);
	CHECK(st == LAST_ACK || st == CLOSE, "A1: TCP state %d, want LAST_ACK (or CLOSE)", st);
	st = tcp_state(a2);
	CHECK(st == CLOSING || st == CLOSE, "A2: TCP state %d, want CLOSING (or CLOSE)", st);
	CHECK(write(a1, "no", 2) < 0 && errno == EPIPE, "A1: could write after its shutdown");
	CHECK(write(a3, "no", 2) < 0 && errno == EPIPE, "A3: could write after its shutdown");
	reads_eof("A1", a1);
	reads_eof("A2", a2);
	reads_eof("A3", a3);
	reads_eof("A4", a4);
	reads_eof("C1", c1);
	reads_eof("C2", c2);
	reaches("A1", a1, CLOSE);
	reaches("A2", a2, CLOSE);
	reaches("A3", a3, CLOSE);
	reaches("A4", a4, CLOSE);
	reaches("C1", c1, CLOSE);
	reaches("C2", c2, CLOSE);
	const char *names[] = { "A1", "A2", "A3", "A4", "A5", "C1", "C2", "C5" };
	int fds[] = { a1, a2, a3, a4, a5, c1, c2, c5 };
	for (int i = 0; i < 8; i++)
		no_error(names[i], fds[i]);
	finish();
}
