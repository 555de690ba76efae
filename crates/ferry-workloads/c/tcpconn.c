/*
 * tcpconn MODE: TCP connections and queues, which ferry refuses unless --tcp-close.
 *   intact:    listener L, a client C connected to L, and A, accepted from L (C <-> A
 *              established). After go, C and A still talk: the dump must have been refused
 *              and the process left as it was.
 *   queued:    listener L and a client C connected but never accepted (waiting in L's accept
 *              queue). After go, L still accepts that very connection.
 *   closed:    L, C, A as in intact, and C2 waiting in L's accept queue; dumped with
 *              --tcp-close. After go: C, A and C2 are closed (no peer, read fails with
 *              ENOTCONN, write with EPIPE), L's queue is empty, and L accepts and serves a new
 *              connection.
 *   udpqueued: a bound UDP socket with one unread datagram. After go it still reads it.
 *   filter:    a bound UDP socket with a classic BPF filter attached. After go the filter is
 *              still there.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/filter.h>
#include <poll.h>
#include <sys/socket.h>

static struct sockaddr_in laddr;

static int connect_to_l(void)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(c);
	SETUP(connect(c, (struct sockaddr *)&laddr, sizeof laddr));
	return c;
}

static void check_closed(const char *name, int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	CHECK(getpeername(fd, (struct sockaddr *)&ss, &len) < 0 && errno == ENOTCONN, "%s: still has a peer", name);
	char b[4];
	errno = 0;
	ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
	CHECK(n < 0 && errno == ENOTCONN, "%s: read returned %zd (%s), want ENOTCONN", name, n, strerror(errno));
	errno = 0;
	n = send(fd, "x", 1, MSG_DONTWAIT);
	CHECK(n < 0 && errno == EPIPE, "%s: write returned %zd (%s), want EPIPE", name, n, strerror(errno));
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
	CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLHUP), "%s: poll does not report a hang-up (revents %#x)", name,
	      p.revents);
}

static void talk(const char *what, int a, int b)
{
	char buf[8] = { 0 };
	CHECK(write(a, "hello", 5) == 5 && read(b, buf, 5) == 5 && memcmp(buf, "hello", 5) == 0, "%s: data lost", what);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "intact";

	if (strcmp(mode, "filter") == 0) {
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(u);
		struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, 0xffff) };
		struct sock_fprog prog = { .len = 1, .filter = code };
		SETUP(setsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog));
		signal_ready();
		wait_go();
		socklen_t len = 0;
		CHECK(getsockopt(u, SOL_SOCKET, SO_GET_FILTER, NULL, &len) == 0 && len == 1, "the filter is gone (%u)",
		      len);
		finish();
	}
	if (strcmp(mode, "udpqueued") == 0) {
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(u);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		SETUP(bind(u, (struct sockaddr *)&a, sizeof a));
		socklen_t len = sizeof a;
		SETUP(getsockname(u, (struct sockaddr *)&a, &len));
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(s);
		SETUP(sendto(s, "dgram", 5, 0, (struct sockaddr *)&a, sizeof a));
		close(s);
		signal_ready();
		wait_go();
		char buf[8] = { 0 };
		CHECK(recv(u, buf, sizeof buf, MSG_DONTWAIT) == 5 && memcmp(buf, "dgram", 5) == 0,
		      "the queued datagram is gone");
		finish();
	}

	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	int one = 1;
	SETUP(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
	laddr.sin_family = AF_INET;
	laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	SETUP(bind(l, (struct sockaddr *)&laddr, sizeof laddr));
	SETUP(listen(l, 8));
	socklen_t len = sizeof laddr;
	SETUP(getsockname(l, (struct sockaddr *)&laddr, &len));

	int c = -1, a = -1, c2 = -1;
	if (strcmp(mode, "queued") == 0) {
		c = connect_to_l();
	} else {
		c = connect_to_l();
		SETUP(a = accept(l, NULL, NULL));
		talk("before: C -> A", c, a);
		if (strcmp(mode, "closed") == 0)
			c2 = connect_to_l();
	}
	fprintf(stderr, "tcpconn %s: L fd %d port %d, C fd %d, A fd %d, C2 fd %d\n", mode, l, ntohs(laddr.sin_port), c,
		a, c2);
	signal_ready();
	wait_go();

	if (strcmp(mode, "intact") == 0) {
		talk("after: C -> A", c, a);
		talk("after: A -> C", a, c);
	} else if (strcmp(mode, "queued") == 0) {
		int x = accept(l, NULL, NULL);
		CHECK(x >= 0, "the queued connection cannot be accepted: %s", strerror(errno));
		if (x >= 0)
			talk("queued C -> accepted", c, x);
	} else {
		check_closed("C", c);
		check_closed("A", a);
		check_closed("C2", c2);
		int fl = fcntl(l, F_GETFL);
		fcntl(l, F_SETFL, fl | O_NONBLOCK);
		int x = accept(l, NULL, NULL);
		if (x >= 0)
			close(x);
		CHECK(x < 0 && errno == EAGAIN, "the listener's queue still held a connection (accept: %d)", x);
		fcntl(l, F_SETFL, fl);
		int n = connect_to_l();
		x = accept(l, NULL, NULL);
		CHECK(x >= 0, "the restored listener does not accept: %s", strerror(errno));
		if (x >= 0) {
			talk("new connection", n, x);
			talk("new connection back", x, n);
		}
	}
	finish();
}
