/*
 * rawsocks MODE: the inet sockets that are not TCP or UDP, and TCP connections in flight.
 *   raw:      raw sockets: R4 (IPPROTO_ICMP, bound to 127.P.P.3, ICMP_FILTER passing only echo
 *             replies), R4H (protocol 253, IP_HDRINCL, connected to 127.0.0.2, shut down for
 *             reading), R6 (IPv6 protocol 253, IPV6_CHECKSUM 2, bound to ::1), R6I (ICMPv6,
 *             ICMP6_FILTER blocking everything). After go: each has its protocol, address,
 *             peer and options; R4H reports its read shutdown; and R4 receives the echo reply
 *             to a ping sent by a fresh ping socket (and not the echo request, filtered).
 *   ping:     ICMP "ping" sockets (needs net.ipv4.ping_group_range to hold gid 0): P4 bound to
 *             127.0.0.1 with ident = W's port number argument, connected to 127.0.0.1, IP_TTL
 *             9; P6 on ::1 (ident + 1). After go: the same idents, peers and TTL, and each gets
 *             the echo reply to its own echo request.
 *   inflight: listener L; W/port holds its port; the test connects once (never accepted) and
 *             then ready. After go (dumped with --skip-in-flight): L's queue is empty, and L
 *             accepts and serves a new connection.
 *   inflightkept: as inflight, for a refused dump: after go L still accepts the test's one.
 *   rclose:   L; C <-> A both ends inside; A2 accepted from the test (W/port, as inflight).
 *             Dumped with --tcp-established, restored with --tcp-close. After go: C, A and A2
 *             are closed (no peer, ENOTCONN, EPIPE, POLLHUP) and L serves a new connection.
 *   halfclose: TCP connections half closed, dumped with --tcp-established. C -> A inside: C sent
 *             "abc" and shut down for writing (C in FIN_WAIT2, A in CLOSE_WAIT, nothing read).
 *             With the test (W/port, two connections): A2 accepted, the test shut its side
 *             (A2 in CLOSE_WAIT); A3 accepted and shut down for writing (A3 in FIN_WAIT2).
 *             After go: A reads "abc" then end of file and is in CLOSE_WAIT; C is in FIN_WAIT2
 *             (within 5 s: its FIN is sent again) and reads what A writes; A2 reads end of file
 *             and answers "bye"; A3 is in FIN_WAIT2 and reads the test's "late".
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/icmp6.h>
#include <linux/icmp.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int geti(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(fd, level, name, &v, &l) < 0)
		return -1000 - errno;
	return v;
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

static int tcp_state(int fd)
{
	unsigned char info[104];
	socklen_t len = sizeof info;
	if (getsockopt(fd, IPPROTO_TCP, 11 /* TCP_INFO */, info, &len) < 0)
		return -1;
	return info[0];
}

/* Wait up to ms for fd to reach TCP state `want`. */
static int wait_state(int fd, int want, int ms)
{
	for (int i = 0; i < ms / 20 && tcp_state(fd) != want; i++)
		usleep(20000);
	return tcp_state(fd);
}

static void talk(const char *what, int a, int b)
{
	char buf[8] = { 0 };
	CHECK(write(a, "hello", 5) == 5 && read(b, buf, 5) == 5 && memcmp(buf, "hello", 5) == 0, "%s: data lost", what);
}

/* Wait until fd is readable (ms), true if it is. */
static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Send an echo request on ping socket fd (seq) and wait for its reply: 1 if it came. */
static int ping_once(int fd, int v6, uint16_t seq)
{
	unsigned char pkt[16] = { 0 };
	pkt[0] = v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
	pkt[6] = (unsigned char)(seq >> 8);
	pkt[7] = (unsigned char)seq;
	memcpy(pkt + 8, "ferryping", 8);
	if (send(fd, pkt, sizeof pkt, 0) != (ssize_t)sizeof pkt) {
		fail("ping send: %s", strerror(errno));
		return 0;
	}
	for (int i = 0; i < 20; i++) {
		if (!readable(fd, 100))
			continue;
		unsigned char r[64];
		ssize_t n = recv(fd, r, sizeof r, MSG_DONTWAIT);
		if (n >= 8 && r[0] == (v6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY) && r[6] == pkt[6] && r[7] == pkt[7])
			return 1;
	}
	return 0;
}

/* Whether fd's line in /proc/self/net/FILE has remote address REM and state 01 (connected):
 * getpeername says ENOTCONN for raw and ping sockets connected with port 0. */
static int connected_to(const char *file, int fd, const char *rem)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return 0;
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/self/net/%s", file);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	int ok = 0;
	while (fgets(line, sizeof line, f)) {
		char local[80], remote[80], state[8];
		unsigned long ino;
		if (sscanf(line, " %*s %79s %79s %7s %*s %*s %*s %*s %*s %lu", local, remote, state, &ino) == 4 &&
		    ino == (unsigned long)st.st_ino)
			ok = strcmp(remote, rem) == 0 && strcmp(state, "01") == 0;
	}
	fclose(f);
	return ok;
}

static uint16_t bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return 0;
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static int listener(struct sockaddr_in *la)
{
	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	la->sin_family = AF_INET;
	la->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	la->sin_port = 0;
	SETUP(bind(l, (struct sockaddr *)la, sizeof *la));
	SETUP(listen(l, 8));
	socklen_t len = sizeof *la;
	SETUP(getsockname(l, (struct sockaddr *)la, &len));
	char port[16];
	snprintf(port, sizeof port, "%d\n", ntohs(la->sin_port));
	SETUP(write_file_atomic("port", port));
	return l;
}

static int connect_to(const struct sockaddr_in *la)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(c);
	SETUP(connect(c, (const struct sockaddr *)la, sizeof *la));
	return c;
}

/* L serves a new connection from this process. */
static void serves_new(int l, const struct sockaddr_in *la)
{
	int fl = fcntl(l, F_GETFL);
	fcntl(l, F_SETFL, fl | O_NONBLOCK);
	int x = accept(l, NULL, NULL);
	if (x >= 0)
		close(x);
	CHECK(x < 0 && errno == EAGAIN, "the listener's queue still held a connection (accept: %d)", x);
	fcntl(l, F_SETFL, fl);
	int n = socket(AF_INET, SOCK_STREAM, 0);
	if (n < 0 || connect(n, (const struct sockaddr *)la, sizeof *la) < 0) {
		fail("cannot connect to the listener: %s", strerror(errno));
		return;
	}
	x = accept(l, NULL, NULL);
	CHECK(x >= 0, "the restored listener does not accept: %s", strerror(errno));
	if (x >= 0) {
		talk("new connection", n, x);
		talk("new connection back", x, n);
	}
}

static void mode_raw(void)
{
	/* An address of this workload's own (127.P.P.3), so that no other ICMP reaches R4. */
	uint32_t own = 0x7f000003U | (((uint32_t)getpid() & 0xffff) << 8);
	int r4 = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	SETUP(r4);
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(own) };
	SETUP(bind(r4, (struct sockaddr *)&lo, sizeof lo));
	struct icmp_filter filt = { .data = ~(1U << ICMP_ECHOREPLY) };
	SETUP(setsockopt(r4, SOL_RAW, ICMP_FILTER, &filt, sizeof filt));

	int r4h = socket(AF_INET, SOCK_RAW, 253);
	SETUP(r4h);
	int one = 1;
	SETUP(setsockopt(r4h, IPPROTO_IP, IP_HDRINCL, &one, sizeof one));
	struct sockaddr_in two = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000002) };
	SETUP(connect(r4h, (struct sockaddr *)&two, sizeof two));
	SETUP(shutdown(r4h, SHUT_RD));

	int r6 = socket(AF_INET6, SOCK_RAW, 253);
	SETUP(r6);
	int csum = 2;
	SETUP(setsockopt(r6, IPPROTO_IPV6, IPV6_CHECKSUM, &csum, sizeof csum));
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	SETUP(bind(r6, (struct sockaddr *)&lo6, sizeof lo6));

	int r6i = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	SETUP(r6i);
	struct icmp6_filter f6;
	ICMP6_FILTER_SETBLOCKALL(&f6);
	SETUP(setsockopt(r6i, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, sizeof f6));

	signal_ready();
	wait_go();

	CHECK(geti(r4, SOL_SOCKET, SO_TYPE) == SOCK_RAW && geti(r4, SOL_SOCKET, SO_PROTOCOL) == IPPROTO_ICMP,
	      "R4: not a raw ICMP socket");
	struct sockaddr_in got;
	socklen_t len = sizeof got;
	CHECK(getsockname(r4, (struct sockaddr *)&got, &len) == 0 && got.sin_addr.s_addr == htonl(own),
	      "R4: not bound to its address");
	struct icmp_filter gf = { 0 };
	len = sizeof gf;
	CHECK(getsockopt(r4, SOL_RAW, ICMP_FILTER, &gf, &len) == 0 && gf.data == filt.data,
	      "R4: ICMP_FILTER is %#x, want %#x", gf.data, filt.data);
	CHECK(geti(r4h, SOL_SOCKET, SO_PROTOCOL) == 253, "R4H: protocol %d", geti(r4h, SOL_SOCKET, SO_PROTOCOL));
	CHECK(geti(r4h, IPPROTO_IP, IP_HDRINCL) == 1, "R4H: IP_HDRINCL lost");
	CHECK(connected_to("raw", r4h, "0200007F:0000"), "R4H: not connected to 127.0.0.2");
	struct pollfd p = { .fd = r4h, .events = POLLIN | POLLRDHUP };
	CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP), "R4H: the read shutdown is gone (revents %#x)",
	      p.revents);
	CHECK(geti(r6, SOL_SOCKET, SO_PROTOCOL) == 253, "R6: protocol %d", geti(r6, SOL_SOCKET, SO_PROTOCOL));
	CHECK(geti(r6, IPPROTO_IPV6, IPV6_CHECKSUM) == 2, "R6: IPV6_CHECKSUM is %d", geti(r6, IPPROTO_IPV6, IPV6_CHECKSUM));
	struct sockaddr_in6 got6;
	len = sizeof got6;
	CHECK(getsockname(r6, (struct sockaddr *)&got6, &len) == 0 &&
		      memcmp(&got6.sin6_addr, &in6addr_loopback, sizeof in6addr_loopback) == 0,
	      "R6: not bound to ::1");
	struct icmp6_filter g6;
	len = sizeof g6;
	CHECK(getsockopt(r6i, IPPROTO_ICMPV6, ICMP6_FILTER, &g6, &len) == 0 && memcmp(&g6, &f6, sizeof f6) == 0,
	      "R6I: ICMP6_FILTER changed");

	/* The echo reply to a ping passes R4's filter; the request does not. (Needs no ping
	 * socket: a raw one sends the request.) */
	int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (s < 0 || bind(s, (struct sockaddr *)&lo, sizeof lo) < 0) {
		fail("raw socket: %s", strerror(errno));
		finish();
	}
	unsigned char req[16] = { ICMP_ECHO, 0, 0, 0, 0x12, 0x34, 0, 1, 'f', 'e', 'r', 'r', 'y' };
	uint32_t sum = 0;
	for (int i = 0; i < 16; i += 2)
		sum += (uint32_t)(req[i] << 8 | req[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	req[2] = (unsigned char)(~sum >> 8);
	req[3] = (unsigned char)~sum;
	CHECK(sendto(s, req, sizeof req, 0, (struct sockaddr *)&lo, sizeof lo) == (ssize_t)sizeof req, "ping: %s",
	      strerror(errno));
	int seen_reply = 0, seen_request = 0;
	for (int i = 0; i < 20 && !seen_reply; i++) {
		if (!readable(r4, 100))
			continue;
		unsigned char r[128];
		ssize_t n = recv(r4, r, sizeof r, MSG_DONTWAIT);
		if (n < 28)
			continue;
		unsigned char *icmp = r + 4 * (r[0] & 15);
		if (icmp[4] != 0x12 || icmp[5] != 0x34)
			continue;
		if (icmp[0] == ICMP_ECHOREPLY)
			seen_reply = 1;
		if (icmp[0] == ICMP_ECHO)
			seen_request = 1;
	}
	CHECK(seen_reply, "R4: the echo reply did not arrive");
	CHECK(!seen_request, "R4: the echo request passed the filter");
	finish();
}

static void mode_ping(int ident)
{
	int p4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	SETUP(p4);
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ident),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(p4, (struct sockaddr *)&lo, sizeof lo));
	lo.sin_port = 0;
	SETUP(connect(p4, (struct sockaddr *)&lo, sizeof lo));
	int ttl = 9;
	SETUP(setsockopt(p4, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl));
	int p6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6);
	SETUP(p6);
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)(ident + 1)),
				    .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	SETUP(bind(p6, (struct sockaddr *)&lo6, sizeof lo6));
	lo6.sin6_port = 0;
	SETUP(connect(p6, (struct sockaddr *)&lo6, sizeof lo6));
	CHECK(ping_once(p4, 0, 1), "P4: no echo reply before the checkpoint");
	CHECK(ping_once(p6, 1, 1), "P6: no echo reply before the checkpoint");

	signal_ready();
	wait_go();

	CHECK(geti(p4, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM && geti(p4, SOL_SOCKET, SO_PROTOCOL) == IPPROTO_ICMP,
	      "P4: not an ICMP datagram socket");
	CHECK(bound_port(p4) == ident, "P4: ident %d, want %d", bound_port(p4), ident);
	CHECK(bound_port(p6) == ident + 1, "P6: ident %d, want %d", bound_port(p6), ident + 1);
	CHECK(geti(p4, IPPROTO_IP, IP_TTL) == 9, "P4: IP_TTL is %d", geti(p4, IPPROTO_IP, IP_TTL));
	CHECK(connected_to("icmp", p4, "0100007F:0000"), "P4: not connected to 127.0.0.1");
	CHECK(connected_to("icmp6", p6, "00000000000000000000000001000000:0000"), "P6: not connected to ::1");
	CHECK(ping_once(p4, 0, 2), "P4: no echo reply after restore");
	CHECK(ping_once(p6, 1, 2), "P6: no echo reply after restore");
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "raw";
	if (strcmp(mode, "raw") == 0)
		mode_raw();
	if (strcmp(mode, "ping") == 0)
		mode_ping(argc > 3 ? atoi(argv[3]) : 4321);

	struct sockaddr_in la;
	int l = listener(&la);
	if (strcmp(mode, "inflight") == 0 || strcmp(mode, "inflightkept") == 0) {
		/* Wait for the test's connection to sit in L's queue. */
		if (!readable(l, 20000))
			die_setup("no connection came from the test");
		signal_ready();
		wait_go();
		if (strcmp(mode, "inflight") == 0) {
			serves_new(l, &la);
		} else {
			int x = accept(l, NULL, NULL);
			CHECK(x >= 0, "the test's queued connection is gone: %s", strerror(errno));
			CHECK(x >= 0 && write(x, "kept", 4) == 4, "cannot answer the kept connection");
		}
		finish();
	}
	if (strcmp(mode, "rclose") == 0) {
		int a2 = accept(l, NULL, NULL);
		SETUP(a2);
		int c = connect_to(&la);
		int a = accept(l, NULL, NULL);
		SETUP(a);
		talk("before: C -> A", c, a);
		SETUP(write(a2, "hi", 2) == 2 ? 0 : -1);
		signal_ready();
		wait_go();
		check_closed("C", c);
		check_closed("A", a);
		check_closed("A2", a2);
		serves_new(l, &la);
		finish();
	}
	if (strcmp(mode, "halfclose") == 0) {
		enum { FIN_WAIT2 = 5, CLOSE_WAIT = 8 };
		int a2 = accept(l, NULL, NULL);
		SETUP(a2);
		int a3 = accept(l, NULL, NULL);
		SETUP(a3);
		SETUP(shutdown(a3, SHUT_WR));
		int c = connect_to(&la);
		int a = accept(l, NULL, NULL);
		SETUP(a);
		SETUP(write(c, "abc", 3) == 3 ? 0 : -1);
		SETUP(shutdown(c, SHUT_WR));
		if (wait_state(c, FIN_WAIT2, 5000) != FIN_WAIT2 || wait_state(a, CLOSE_WAIT, 5000) != CLOSE_WAIT ||
		    wait_state(a2, CLOSE_WAIT, 10000) != CLOSE_WAIT || wait_state(a3, FIN_WAIT2, 5000) != FIN_WAIT2)
			die_setup("states C %d A %d A2 %d A3 %d", tcp_state(c), tcp_state(a), tcp_state(a2), tcp_state(a3));
		signal_ready();
		wait_go();
		CHECK(tcp_state(a) == CLOSE_WAIT, "A: TCP state %d, want CLOSE_WAIT", tcp_state(a));
		char b[8] = { 0 };
		CHECK(read(a, b, sizeof b) == 3 && memcmp(b, "abc", 3) == 0, "A: the 3 bytes C sent are gone");
		CHECK(read(a, b, sizeof b) == 0, "A: no end of file after them");
		CHECK(write(a, "xyz", 3) == 3, "A: cannot write after C's FIN: %s", strerror(errno));
		CHECK(read(c, b, sizeof b) == 3 && memcmp(b, "xyz", 3) == 0, "C: A's bytes did not arrive");
		CHECK(wait_state(c, FIN_WAIT2, 5000) == FIN_WAIT2, "C: TCP state %d, want FIN_WAIT2", tcp_state(c));
		CHECK(write(c, "no", 2) < 0 && errno == EPIPE, "C: could write after its shutdown");
		CHECK(tcp_state(a2) == CLOSE_WAIT, "A2: TCP state %d, want CLOSE_WAIT", tcp_state(a2));
		CHECK(read(a2, b, sizeof b) == 0, "A2: no end of file from the test");
		CHECK(write(a2, "bye", 3) == 3, "A2: cannot answer: %s", strerror(errno));
		CHECK(wait_state(a3, FIN_WAIT2, 5000) == FIN_WAIT2, "A3: TCP state %d, want FIN_WAIT2", tcp_state(a3));
		memset(b, 0, sizeof b);
		CHECK(read(a3, b, 4) == 4 && memcmp(b, "late", 4) == 0, "A3: the test's bytes did not arrive");
		finish();
	}
	die_setup("unknown mode %s", mode);
}
