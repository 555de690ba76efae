/*
 * inet: TCP and UDP sockets over IPv4 and IPv6 that are not connections.
 *   fd A: TCPv4 listener on 127.0.0.1:<any>, backlog 7, O_NONBLOCK, with SO_REUSEADDR,
 *         SO_KEEPALIVE, TCP_NODELAY, TCP_KEEPIDLE 77, IP_TOS 0x10, SO_RCVBUF 96 KiB;
 *   fd B: TCPv6 listener on [::1]:<any>, backlog 3, IPV6_V6ONLY, SO_REUSEPORT, TCP_DEFER_ACCEPT;
 *   fd C: UDPv4 bound to 127.0.0.1:<any> with SO_BROADCAST;
 *   fd D: UDPv6 bound to [::1]:<any> and connected to E's address;
 *   fd E: UDPv6 bound to [::1]:<any> (D's peer);
 *   fd F: TCPv4 socket(), nothing else; fd G: TCPv6 bound to [::1]:<any>, not listening;
 *   fd H: UDPv4 socket(), nothing else, with IP_TTL 9, created with fsuid 4321 (so it belongs
 *         to uid 4321).
 * After go, everything is read back from the kernel and compared with the values recorded
 * before ready: addresses, peers, options, listen backlog (TCP_INFO), flags; then the sockets
 * must work: both listeners accept a new connection and carry data both ways, datagrams go
 * from E to D (connected) and from a new socket to C, and F and H can still bind and connect.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/fsuid.h>
#include <sys/socket.h>

enum { A, B, C, D, E, F, G, H, N };
static int fds[N];
static struct sockaddr_storage names[N], peers[N];
static socklen_t namelen[N], peerlen[N];

struct opt {
	int sock, level, name;
	const char *what;
	int want;
};

static const struct opt opts[] = {
	{ A, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR", 1 },
	{ A, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", 1 },
	{ A, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY", 1 },
	{ A, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE", 77 },
	{ A, IPPROTO_IP, IP_TOS, "IP_TOS", 0x10 },
	{ B, IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY", 1 },
	{ B, SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT", 1 },
	{ C, SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST", 1 },
	{ H, IPPROTO_IP, IP_TTL, "IP_TTL", 9 },
};
#define NOPTS (int)(sizeof opts / sizeof opts[0])
static int rcvbuf_before, deferaccept_before, flags_before[N];

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof v;
	if (getsockopt(fd, level, name, &v, &len) < 0)
		return -12345;
	return v;
}

static void set(int fd, int level, int name, int v)
{
	SETUP(setsockopt(fd, level, name, &v, sizeof v));
}

static int tcp_socket(int family) { return socket(family, SOCK_STREAM, 0); }
static int udp_socket(int family) { return socket(family, SOCK_DGRAM, 0); }

static void bind_lo(int fd, int family)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		SETUP(bind(fd, (struct sockaddr *)a, sizeof *a));
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		SETUP(bind(fd, (struct sockaddr *)a, sizeof *a));
	}
}

static void record(void)
{
	for (int i = 0; i < N; i++) {
		namelen[i] = sizeof names[i];
		SETUP(getsockname(fds[i], (struct sockaddr *)&names[i], &namelen[i]));
		peerlen[i] = sizeof peers[i];
		if (getpeername(fds[i], (struct sockaddr *)&peers[i], &peerlen[i]) < 0)
			peerlen[i] = 0;
		flags_before[i] = fcntl(fds[i], F_GETFL);
	}
	rcvbuf_before = getint(fds[A], SOL_SOCKET, SO_RCVBUF);
	deferaccept_before = getint(fds[B], IPPROTO_TCP, TCP_DEFER_ACCEPT);
}

/* TCP_INFO: tcpi_state and, for a listener, tcpi_sacked (its backlog). */
static void tcp_state(int fd, int *state, unsigned *backlog)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;
	memset(&ti, 0, sizeof ti);
	*state = -1;
	*backlog = 0;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
		*state = ti.tcpi_state;
		*backlog = ti.tcpi_sacked;
	}
}

static const char *name_of(int i)
{
	static const char *n[] = { "A", "B", "C", "D", "E", "F", "G", "H" };
	return n[i];
}

/* Connect to listener i, accept, send one line each way. */
static void check_listener(int i)
{
	int family = names[i].ss_family;
	int c = tcp_socket(family);
	if (c < 0 || connect(c, (struct sockaddr *)&names[i], namelen[i]) < 0) {
		fail("listener %s: connect: %s", name_of(i), strerror(errno));
		return;
	}
	/* B has TCP_DEFER_ACCEPT: it accepts once data arrives */
	if (write(c, "ping", 4) != 4)
		fail("listener %s: client write: %s", name_of(i), strerror(errno));
	struct pollfd p = { .fd = fds[i], .events = POLLIN };
	if (poll(&p, 1, 5000) != 1) {
		fail("listener %s: nothing to accept after 5 s", name_of(i));
		close(c);
		return;
	}
	int a = accept(fds[i], NULL, NULL);
	if (a < 0) {
		fail("listener %s: accept: %s", name_of(i), strerror(errno));
		close(c);
		return;
	}
	char buf[8] = { 0 };
	if (read(a, buf, 4) != 4 || memcmp(buf, "ping", 4) != 0)
		fail("listener %s: server read %.4s", name_of(i), buf);
	if (write(a, "pong", 4) != 4 || read(c, buf, 4) != 4 || memcmp(buf, "pong", 4) != 0)
		fail("listener %s: reply lost", name_of(i));
	close(a);
	close(c);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);

	SETUP(fds[A] = tcp_socket(AF_INET));
	set(fds[A], SOL_SOCKET, SO_REUSEADDR, 1);
	set(fds[A], SOL_SOCKET, SO_KEEPALIVE, 1);
	set(fds[A], IPPROTO_TCP, TCP_NODELAY, 1);
	set(fds[A], IPPROTO_TCP, TCP_KEEPIDLE, 77);
	set(fds[A], IPPROTO_IP, IP_TOS, 0x10);
	set(fds[A], SOL_SOCKET, SO_RCVBUF, 96 * 1024);
	bind_lo(fds[A], AF_INET);
	SETUP(listen(fds[A], 7));
	SETUP(fcntl(fds[A], F_SETFL, O_NONBLOCK | O_RDWR));

	SETUP(fds[B] = tcp_socket(AF_INET6));
	set(fds[B], IPPROTO_IPV6, IPV6_V6ONLY, 1);
	set(fds[B], SOL_SOCKET, SO_REUSEPORT, 1);
	set(fds[B], IPPROTO_TCP, TCP_DEFER_ACCEPT, 5);
	bind_lo(fds[B], AF_INET6);
	SETUP(listen(fds[B], 3));

	SETUP(fds[C] = udp_socket(AF_INET));
	set(fds[C], SOL_SOCKET, SO_BROADCAST, 1);
	bind_lo(fds[C], AF_INET);

	SETUP(fds[E] = udp_socket(AF_INET6));
	bind_lo(fds[E], AF_INET6);
	SETUP(fds[D] = udp_socket(AF_INET6));
	bind_lo(fds[D], AF_INET6);
	{
		struct sockaddr_storage e;
		socklen_t len = sizeof e;
		SETUP(getsockname(fds[E], (struct sockaddr *)&e, &len));
		SETUP(connect(fds[D], (struct sockaddr *)&e, len));
	}

	SETUP(fds[F] = tcp_socket(AF_INET));
	SETUP(fds[G] = tcp_socket(AF_INET6));
	bind_lo(fds[G], AF_INET6);
	setfsuid(4321);
	fds[H] = udp_socket(AF_INET);
	setfsuid(0);
	SETUP(fds[H]);
	set(fds[H], IPPROTO_IP, IP_TTL, 9);

	record();
	if (deferaccept_before <= 0)
		die_setup("TCP_DEFER_ACCEPT reads %d", deferaccept_before);
	for (int i = 0; i < N; i++)
		fprintf(stderr, "inet: %s is fd %d\n", name_of(i), fds[i]);
	signal_ready();
	wait_go();

	for (int i = 0; i < N; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		memset(&ss, 0, sizeof ss);
		if (getsockname(fds[i], (struct sockaddr *)&ss, &len) < 0)
			fail("%s: getsockname: %s", name_of(i), strerror(errno));
		else if (len != namelen[i] || memcmp(&ss, &names[i], len) != 0)
			fail("%s: local address changed", name_of(i));
		len = sizeof ss;
		memset(&ss, 0, sizeof ss);
		if (getpeername(fds[i], (struct sockaddr *)&ss, &len) < 0)
			len = 0;
		if (len != peerlen[i] || memcmp(&ss, &peers[i], len) != 0)
			fail("%s: peer changed (length %u, was %u)", name_of(i), len, peerlen[i]);
		int fl = fcntl(fds[i], F_GETFL);
		CHECK(fl == flags_before[i], "%s: file status flags %#x, were %#x", name_of(i), fl, flags_before[i]);
	}
	for (int i = 0; i < NOPTS; i++) {
		int v = getint(fds[opts[i].sock], opts[i].level, opts[i].name);
		CHECK(v == opts[i].want, "%s: %s is %d, want %d", name_of(opts[i].sock), opts[i].what, v, opts[i].want);
	}
	int v = getint(fds[A], SOL_SOCKET, SO_RCVBUF);
	CHECK(v == rcvbuf_before, "A: SO_RCVBUF is %d, was %d", v, rcvbuf_before);
	v = getint(fds[B], IPPROTO_TCP, TCP_DEFER_ACCEPT);
	CHECK(v == deferaccept_before, "B: TCP_DEFER_ACCEPT is %d, was %d", v, deferaccept_before);
	/* options nobody set are at their defaults */
	v = getint(fds[B], IPPROTO_TCP, TCP_NODELAY);
	CHECK(v == 0, "B: TCP_NODELAY is %d, want 0", v);
	v = getint(fds[C], SOL_SOCKET, SO_REUSEADDR);
	CHECK(v == 0, "C: SO_REUSEADDR is %d, want 0", v);
	v = getint(fds[D], SOL_SOCKET, SO_KEEPALIVE);
	CHECK(v == 0, "D: SO_KEEPALIVE is %d, want 0", v);

	int state;
	unsigned backlog;
	tcp_state(fds[A], &state, &backlog);
	CHECK(state == TCP_LISTEN && backlog == 7, "A: state %d backlog %u, want LISTEN with 7", state, backlog);
	tcp_state(fds[B], &state, &backlog);
	CHECK(state == TCP_LISTEN && backlog == 3, "B: state %d backlog %u, want LISTEN with 3", state, backlog);
	tcp_state(fds[F], &state, &backlog);
	CHECK(state == TCP_CLOSE, "F: state %d, want CLOSE", state);
	tcp_state(fds[G], &state, &backlog);
	CHECK(state == TCP_CLOSE, "G: state %d, want CLOSE", state);
	CHECK(getint(fds[A], SOL_SOCKET, SO_ACCEPTCONN) == 1, "A: not accepting connections");
	CHECK(getint(fds[G], SOL_SOCKET, SO_ACCEPTCONN) == 0, "G: is listening");

	check_listener(A);
	check_listener(B);

	/* UDP: E -> D (D is connected to E, so it only hears E) and D -> E by send() */
	char buf[32] = { 0 };
	if (sendto(fds[E], "to-d", 4, 0, (struct sockaddr *)&names[D], namelen[D]) != 4)
		fail("E: sendto D: %s", strerror(errno));
	else if (recv(fds[D], buf, sizeof buf, 0) != 4 || memcmp(buf, "to-d", 4) != 0)
		fail("D: did not receive E's datagram (%s)", strerror(errno));
	if (send(fds[D], "to-e", 4, 0) != 4)
		fail("D: send on its connection: %s", strerror(errno));
	else {
		struct sockaddr_storage from;
		socklen_t flen = sizeof from;
		memset(buf, 0, sizeof buf);
		if (recvfrom(fds[E], buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) != 4 || memcmp(buf, "to-e", 4) != 0)
			fail("E: did not receive D's datagram");
		else if (flen != namelen[D] || memcmp(&from, &names[D], flen) != 0)
			fail("E: D's datagram came from another address");
	}
	int u = udp_socket(AF_INET);
	if (sendto(u, "to-c", 4, 0, (struct sockaddr *)&names[C], namelen[C]) != 4)
		fail("sendto C: %s", strerror(errno));
	else if (recv(fds[C], buf, sizeof buf, 0) != 4 || memcmp(buf, "to-c", 4) != 0)
		fail("C: did not receive a datagram");
	close(u);

	struct stat st;
	CHECK(fstat(fds[H], &st) == 0 && st.st_uid == 4321, "H: owned by uid %u, want 4321", st.st_uid);
	CHECK(fstat(fds[A], &st) == 0 && st.st_uid == 0, "A: owned by uid %u, want 0", st.st_uid);

	/* F and H are fresh: they can still be bound */
	bind_lo(fds[F], AF_INET);
	bind_lo(fds[H], AF_INET);
	finish();
}
