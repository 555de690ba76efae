/*
 * sockopts MODE: socket options and states of TCP and UDP sockets other than a listener's.
 *   conn:      an established connection (--tcp-established): C connected to listener L
 *              (SO_REUSEADDR), A accepted from L. Many options are set on C and A (SO_REUSEADDR,
 *              SO_KEEPALIVE, TCP_NODELAY, buffer sizes, IP_TOS, TCP_KEEP*, SO_LINGER,
 *              SO_PRIORITY, SO_MARK, IP_TTL, TCP_USER_TIMEOUT, ...); after go every option of L,
 *              C and A reads back exactly as before (getsockopt, byte for byte), and C and A
 *              still talk. A2, accepted from L too, was shut down for reading: it still polls
 *              POLLRDHUP, and still sends to its peer C2.
 *   reuseport: two listeners L1 and L2 with SO_REUSEPORT (and SO_REUSEADDR) bound side by side
 *              on the same port; after go both are there with the same port and option, and a
 *              series of connections to the port is accepted (each by L1 or L2, both in all).
 *   udp:       U1, a UDP socket with UDP_CORK set and nothing pending; U2, a connected UDP socket
 *              shut down for writing; U3, one shut down for reading. After go U1 is still corked
 *              (a datagram sent on it waits until uncorked), U2's send fails with EPIPE, and U3
 *              still polls POLLRDHUP.
 *   server:    L accepts X, a connection from the test (outside the tree), and sends "hi" on
 *              it; dumped with --tcp-close. After go X is closed (no peer, ENOTCONN, EPIPE,
 *              POLLHUP; the test saw its end closed too) and L serves a new connection.
 *   forkorder: C <-> A established in the parent; the listener L they came from (without
 *              SO_REUSEADDR) only in a child. Dumped with --tcp-established: after go L is
 *              listening in the child and accepts, and C and A still talk.
 *   udpcorked: U1 corked with 5 bytes pending (a datagram not sent yet): the dump must be
 *              refused; after go, uncorking sends the datagram to R, which reads it.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#ifndef UDP_CORK
#define UDP_CORK 1
#endif

struct opt {
	int level, name;
	const char *what;
};

static const struct opt OPTS[] = {
	{ SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR" },
	{ SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT" },
	{ SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE" },
	{ SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF" },
	{ SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF" },
	{ SOL_SOCKET, SO_LINGER, "SO_LINGER" },
	{ SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY" },
	{ SOL_SOCKET, SO_MARK, "SO_MARK" },
	{ SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT" },
	{ SOL_SOCKET, SO_OOBINLINE, "SO_OOBINLINE" },
	{ SOL_SOCKET, SO_RCVTIMEO, "SO_RCVTIMEO" },
	{ SOL_SOCKET, SO_SNDTIMEO, "SO_SNDTIMEO" },
	{ IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY" },
	{ IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE" },
	{ IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL" },
	{ IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT" },
	{ IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT" },
	{ IPPROTO_TCP, TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT" },
	{ IPPROTO_TCP, TCP_LINGER2, "TCP_LINGER2" },
	{ IPPROTO_TCP, TCP_CONGESTION, "TCP_CONGESTION" },
	{ IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS" },
	{ IPPROTO_TCP, TCP_INQ, "TCP_INQ" },
	{ IPPROTO_IP, IP_TOS, "IP_TOS" },
	{ IPPROTO_IP, IP_TTL, "IP_TTL" },
	{ IPPROTO_IP, IP_MTU_DISCOVER, "IP_MTU_DISCOVER" },
	{ IPPROTO_IP, IP_RECVERR, "IP_RECVERR" },
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

struct saved {
	unsigned char v[NOPTS][64];
	socklen_t len[NOPTS];
};

static void save(int fd, struct saved *s)
{
	for (size_t i = 0; i < NOPTS; i++) {
		s->len[i] = sizeof s->v[i];
		SETUP(getsockopt(fd, OPTS[i].level, OPTS[i].name, s->v[i], &s->len[i]));
	}
}

static void compare(const char *name, int fd, const struct saved *s)
{
	for (size_t i = 0; i < NOPTS; i++) {
		unsigned char v[64];
		socklen_t len = sizeof v;
		if (getsockopt(fd, OPTS[i].level, OPTS[i].name, v, &len) < 0) {
			fail("%s: getsockopt %s: %s", name, OPTS[i].what, strerror(errno));
			continue;
		}
		if (len != s->len[i] || memcmp(v, s->v[i], len) != 0) {
			int was = 0, now = 0;
			memcpy(&was, s->v[i], s->len[i] < 4 ? s->len[i] : 4);
			memcpy(&now, v, len < 4 ? len : 4);
			fail("%s: %s is %d (%u bytes), was %d (%u bytes)", name, OPTS[i].what, now, len, was, s->len[i]);
		}
	}
}

static void seti(int fd, int level, int name, int v)
{
	SETUP(setsockopt(fd, level, name, &v, sizeof v));
}

static void set_many(int fd, int k)
{
	seti(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	seti(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	seti(fd, SOL_SOCKET, SO_SNDBUF, 300000 + k);
	seti(fd, SOL_SOCKET, SO_RCVBUF, 200000 + k);
	struct linger lg = { 1, 5 + k };
	SETUP(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
	seti(fd, SOL_SOCKET, SO_PRIORITY, 3 + k);
	seti(fd, SOL_SOCKET, SO_MARK, 42 + k);
	seti(fd, SOL_SOCKET, SO_RCVLOWAT, 1 + k);
	seti(fd, SOL_SOCKET, SO_OOBINLINE, 1);
	struct timeval tv = { 7 + k, 250000 };
	SETUP(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
	SETUP(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
	seti(fd, IPPROTO_TCP, TCP_NODELAY, 1);
	seti(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77 + k);
	seti(fd, IPPROTO_TCP, TCP_KEEPINTVL, 13 + k);
	seti(fd, IPPROTO_TCP, TCP_KEEPCNT, 4 + k);
	seti(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345 + k);
	seti(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, 100000 + k);
	seti(fd, IPPROTO_TCP, TCP_LINGER2, 17 + k);
	SETUP(setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, "reno", 4));
	seti(fd, IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, 1);
	seti(fd, IPPROTO_TCP, TCP_INQ, 1);
	seti(fd, IPPROTO_IP, IP_TOS, 0x10 + 4 * k);
	seti(fd, IPPROTO_IP, IP_TTL, 33 + k);
	seti(fd, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT);
	seti(fd, IPPROTO_IP, IP_RECVERR, 1);
}

static void talk(const char *what, int a, int b)
{
	char buf[8] = { 0 };
	CHECK(write(a, "hello", 5) == 5 && read(b, buf, 5) == 5 && memcmp(buf, "hello", 5) == 0, "%s: data lost", what);
}

static int listener(struct sockaddr_in *la, int reuseport)
{
	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	seti(l, SOL_SOCKET, SO_REUSEADDR, 1);
	if (reuseport)
		seti(l, SOL_SOCKET, SO_REUSEPORT, 1);
	SETUP(bind(l, (struct sockaddr *)la, sizeof *la));
	SETUP(listen(l, 16));
	socklen_t len = sizeof *la;
	SETUP(getsockname(l, (struct sockaddr *)la, &len));
	return l;
}

static int udp_pair(int *r, struct sockaddr_in *ra)
{
	*ra = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	*r = socket(AF_INET, SOCK_DGRAM, 0);
	SETUP(*r);
	SETUP(bind(*r, (struct sockaddr *)ra, sizeof *ra));
	socklen_t len = sizeof *ra;
	SETUP(getsockname(*r, (struct sockaddr *)ra, &len));
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	SETUP(u);
	SETUP(connect(u, (struct sockaddr *)ra, sizeof *ra));
	return u;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "conn";
	struct sockaddr_in la = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	if (strcmp(mode, "conn") == 0) {
		int l = listener(&la, 0);
		int c = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c);
		SETUP(connect(c, (struct sockaddr *)&la, sizeof la));
		int a = accept(l, NULL, NULL);
		SETUP(a);
		set_many(c, 0);
		set_many(a, 1);
		struct saved sl, sc, sa;
		save(l, &sl);
		save(c, &sc);
		save(a, &sa);
		talk("C -> A before", c, a);
		/* C2 <-> A2: A2 shut down for reading (still ESTABLISHED). */
		int c2 = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c2);
		SETUP(connect(c2, (struct sockaddr *)&la, sizeof la));
		int a2 = accept(l, NULL, NULL);
		SETUP(a2);
		SETUP(shutdown(a2, SHUT_RD));
		signal_ready();
		wait_go();
		struct pollfd p2 = { .fd = a2, .events = POLLIN | POLLRDHUP };
		CHECK(poll(&p2, 1, 0) == 1 && (p2.revents & POLLRDHUP), "A2 (shut down for reading) does not poll RDHUP (%#x)",
		      p2.revents);
		talk("A2 -> C2", a2, c2);
		compare("L", l, &sl);
		compare("C", c, &sc);
		compare("A", a, &sa);
		talk("C -> A", c, a);
		talk("A -> C", a, c);
		finish();
	}
	if (strcmp(mode, "reuseport") == 0) {
		int l1 = listener(&la, 1);
		struct sockaddr_in la2 = la;
		int l2 = listener(&la2, 1);
		SETUP(fcntl(l1, F_SETFL, O_NONBLOCK));
		SETUP(fcntl(l2, F_SETFL, O_NONBLOCK));
		signal_ready();
		wait_go();
		struct sockaddr_in a1, a2;
		socklen_t len = sizeof a1;
		CHECK(getsockname(l1, (struct sockaddr *)&a1, &len) == 0 && a1.sin_port == la.sin_port,
		      "L1 is not on port %d", ntohs(la.sin_port));
		len = sizeof a2;
		CHECK(getsockname(l2, (struct sockaddr *)&a2, &len) == 0 && a2.sin_port == la.sin_port,
		      "L2 is not on port %d", ntohs(la.sin_port));
		int v = 0;
		len = sizeof v;
		CHECK(getsockopt(l2, SOL_SOCKET, SO_REUSEPORT, &v, &len) == 0 && v == 1, "L2 lost SO_REUSEPORT");
		int by1 = 0, by2 = 0;
		for (int i = 0; i < 64 && !(by1 && by2); i++) {
			int c = socket(AF_INET, SOCK_STREAM, 0);
			SETUP(c);
			if (connect(c, (struct sockaddr *)&la, sizeof la) < 0) {
				fail("connect %d to port %d: %s", i, ntohs(la.sin_port), strerror(errno));
				break;
			}
			struct pollfd p[2] = { { .fd = l1, .events = POLLIN }, { .fd = l2, .events = POLLIN } };
			CHECK(poll(p, 2, 5000) > 0, "connection %d accepted by neither listener", i);
			for (int k = 0; k < 2; k++)
				if (p[k].revents & POLLIN) {
					int a = accept(k == 0 ? l1 : l2, NULL, NULL);
					if (a >= 0) {
						*(k == 0 ? &by1 : &by2) += 1;
						close(a);
					}
				}
			close(c);
		}
		CHECK(by1 > 0 && by2 > 0, "connections accepted: %d by L1, %d by L2 (want both)", by1, by2);
		finish();
	}
	if (strcmp(mode, "udp") == 0) {
		int r1, r2, r3;
		struct sockaddr_in ra1, ra2, ra3;
		int u1 = udp_pair(&r1, &ra1);
		seti(u1, IPPROTO_UDP, UDP_CORK, 1);
		int u2 = udp_pair(&r2, &ra2);
		SETUP(shutdown(u2, SHUT_WR));
		int u3 = udp_pair(&r3, &ra3);
		SETUP(shutdown(u3, SHUT_RD));
		CHECK(send(u2, "x", 1, 0) < 0 && errno == EPIPE, "U2 can send before the checkpoint");
		signal_ready();
		wait_go();
		int v = 0;
		socklen_t len = sizeof v;
		CHECK(getsockopt(u1, IPPROTO_UDP, UDP_CORK, &v, &len) == 0 && v == 1, "U1 is not corked (UDP_CORK %d)", v);
		CHECK(send(u1, "corked", 6, 0) == 6, "U1: send: %s", strerror(errno));
		char b[16];
		CHECK(recv(r1, b, sizeof b, MSG_DONTWAIT) < 0 && errno == EAGAIN, "U1's datagram left while corked");
		seti(u1, IPPROTO_UDP, UDP_CORK, 0);
		struct pollfd p = { .fd = r1, .events = POLLIN };
		CHECK(poll(&p, 1, 2000) == 1 && recv(r1, b, sizeof b, 0) == 6 && memcmp(b, "corked", 6) == 0,
		      "U1's datagram did not arrive once uncorked");
		errno = 0;
		ssize_t n = send(u2, "x", 1, 0);
		CHECK(n < 0 && errno == EPIPE, "U2 (shut down for writing) sent: %zd (%s)", n, strerror(errno));
		CHECK(recv(r2, b, sizeof b, MSG_DONTWAIT) < 0, "U2's datagram arrived");
		struct pollfd p3 = { .fd = u3, .events = POLLIN | POLLRDHUP };
		CHECK(poll(&p3, 1, 0) == 1 && (p3.revents & POLLRDHUP), "U3 (shut down for reading) does not poll RDHUP (%#x)",
		      p3.revents);
		finish();
	}
	if (strcmp(mode, "udpcorked") == 0) {
		int r1;
		struct sockaddr_in ra1;
		int u1 = udp_pair(&r1, &ra1);
		seti(u1, IPPROTO_UDP, UDP_CORK, 1);
		SETUP(send(u1, "hello", 5, 0));
		signal_ready();
		wait_go();
		seti(u1, IPPROTO_UDP, UDP_CORK, 0);
		char b[16];
		struct pollfd p = { .fd = r1, .events = POLLIN };
		CHECK(poll(&p, 1, 2000) == 1 && recv(r1, b, sizeof b, 0) == 5 && memcmp(b, "hello", 5) == 0,
		      "the corked datagram did not arrive once uncorked");
		finish();
	}
	if (strcmp(mode, "server") == 0) {
		int l = listener(&la, 0);
		char port[32];
		snprintf(port, sizeof port, "%d\n", ntohs(la.sin_port));
		SETUP(write_file_atomic("port", port));
		int x = accept(l, NULL, NULL);
		SETUP(x);
		SETUP(write(x, "hi", 2));
		signal_ready();
		wait_go();
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		CHECK(getpeername(x, (struct sockaddr *)&ss, &len) < 0 && errno == ENOTCONN, "X: still has a peer");
		char b[4];
		errno = 0;
		ssize_t n = recv(x, b, sizeof b, MSG_DONTWAIT);
		CHECK(n < 0 && errno == ENOTCONN, "X: read returned %zd (%s), want ENOTCONN", n, strerror(errno));
		errno = 0;
		n = send(x, "x", 1, MSG_DONTWAIT);
		CHECK(n < 0 && errno == EPIPE, "X: write returned %zd (%s), want EPIPE", n, strerror(errno));
		struct pollfd p = { .fd = x, .events = POLLIN | POLLOUT };
		CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLHUP), "X: poll does not report a hang-up (revents %#x)",
		      p.revents);
		/* The listener still serves. */
		int c = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c);
		CHECK(connect(c, (struct sockaddr *)&la, sizeof la) == 0, "connect to L: %s", strerror(errno));
		int a = accept(l, NULL, NULL);
		CHECK(a >= 0, "L: accept: %s", strerror(errno));
		if (a >= 0)
			talk("new connection", c, a);
		finish();
	}
	if (strcmp(mode, "forkorder") == 0) {
		/* The parent keeps C <-> A, the child the listener L they came from (no options). */
		int l = listener(&la, 0);
		seti(l, SOL_SOCKET, SO_REUSEADDR, 0);
		int c = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(c);
		SETUP(connect(c, (struct sockaddr *)&la, sizeof la));
		int a = accept(l, NULL, NULL);
		SETUP(a);
		pid_t kid = fork();
		SETUP(kid);
		if (kid == 0) {
			close(a);
			close(c);
			while (!go)
				pause();
			int v = 0;
			socklen_t len = sizeof v;
			CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1, "child: L is not listening");
			struct pollfd p = { .fd = l, .events = POLLIN };
			CHECK(poll(&p, 1, 5000) == 1, "child: no connection to accept");
			int x = accept(l, NULL, NULL);
			CHECK(x >= 0, "child: accept: %s", strerror(errno));
			finish();
		}
		close(l);
		signal_ready();
		wait_go();
		CHECK(kill(kid, SIGUSR2) == 0, "kill: %s", strerror(errno));
		talk("C -> A", c, a);
		talk("A -> C", a, c);
		int n = socket(AF_INET, SOCK_STREAM, 0);
		SETUP(n);
		CHECK(connect(n, (struct sockaddr *)&la, sizeof la) == 0, "connect to L: %s", strerror(errno));
		int st;
		CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed (%#x)", st);
		finish();
	}
	die_setup("unknown mode %s", mode);
}
