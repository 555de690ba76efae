/*
 * unix: unix domain sockets of every kind, with data in flight, across a checkpoint.
 *   sp_stream   socketpair(STREAM): 150000 pseudo-random bytes a->b of which b already read 1000,
 *               "pong" b->a; b is O_NONBLOCK with SO_PEEK_OFF 10, a has SO_RCVBUF 65536
 *   sp_dgram    socketpair(DGRAM): datagrams of 1, 1000, 0 and 70000 bytes a->b, "x" b->a
 *   sp_seq      socketpair(SEQPACKET): records "r1" and "record-two" a->b
 *   path        W/srv.sock (socket file mode 0777, owner 1001:1002), STREAM listener with
 *               backlog 7: client C (unbound) connected and accepted as S, "to-server" C->S,
 *               "to-client-1" + "to-client-2" S->C; a second client P connected and not
 *               accepted yet; S2 accepted from C2, which sent "gone" and closed
 *   abstract    @ferry-unix-PID, STREAM listener: client AC bound to @ferry-unix-PID-cli,
 *               accepted as AS, "a1" AC->AS and "a22" AS->AC; SO_PASSCRED and SO_RCVTIMEO 7.5 s
 *               on AS, SO_SNDTIMEO 7.5 s on AC; a client AP bound to @ferry-unix-PID-pending,
 *               not accepted yet
 *   dgram       D1 bound to W/d1.sock and connected to D2 bound to W/d2.sock; D1 sends "c1",
 *               "c22"; an unbound U sendto()s "u333" to D2; D2 sendto()s "back" to D1; D3 bound
 *               to @ferry-unix-PID-d3 gets "to-d3" from D1 (sendto while connected)
 *   outside     with argv[2] "ext=NAME": a datagram socket connected to @NAME (the test's socket,
 *               outside the dump) sends "ext-before", and "ext-after" once restored
 *   closed      socketpair(STREAM), "bye" sent, then the sender closed: the survivor reads
 *               "bye" then EOF; the same with SEQPACKET and "sq-last"
 *   shut        socketpair(STREAM), "last" sent, then shutdown(SHUT_WR): "last" then EOF, and
 *               the shut end still receives
 * After go: every queue has exactly its messages, with their boundaries and senders; names and
 * peer names are the same; each pair still talks both ways; the path listener yields P, then a
 * connection the test made to it before go (it sends "from-test"), then a new one of our own;
 * the abstract listener yields the test's connection ("from-test") and a new one.
 *
 * Modes (argv[2]): "outside": only a stream socket connected to W/outside.sock (the test's
 * listener), fd > 2 — the dump must be refused. "rights": a socketpair with an fd in flight
 * (SCM_RIGHTS), a pipe's read end whose two ends the process closed since — after restore the
 * datagram comes with its fd, and the pipe with its bytes.
 * "embryo": a client sent data on a connection its listener has not accepted — refused too.
 */
#include "common.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

static socklen_t mkaddr(struct sockaddr_un *sa, const char *path, int abstract)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (abstract) {
		size_t n = strlen(path);
		memcpy(sa->sun_path + 1, path, n);
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	}
	snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static int sock_bound(int type, const char *name, int abstract)
{
	int s = socket(AF_UNIX, type, 0);
	SETUP(s);
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, name, abstract);
	if (!abstract)
		unlink(name);
	SETUP(bind(s, (struct sockaddr *)&sa, len));
	return s;
}

static void do_connect(int s, const char *name, int abstract)
{
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, name, abstract);
	SETUP(connect(s, (struct sockaddr *)&sa, len));
}

static void must_send(int s, const void *buf, size_t len)
{
	size_t off = 0;
	while (off < len || len == 0) {
		ssize_t n = send(s, (const char *)buf + off, len - off, MSG_NOSIGNAL);
		if (n < 0)
			die_setup("send %zu bytes: %s", len, strerror(errno));
		off += (size_t)n;
		if (len == 0)
			break;
	}
}

static void must_sendto(int s, const char *msg, const char *name, int abstract)
{
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, name, abstract);
	SETUP(sendto(s, msg, strlen(msg), 0, (struct sockaddr *)&sa, len));
}

static char rbuf[200000];

/* Receive one message (MSG_DONTWAIT) and compare it; from: expected sender address or NULL. */
static void expect_msg(int s, const char *what, const void *want, size_t len, const struct sockaddr_un *from,
		       socklen_t fromlen)
{
	struct sockaddr_un got;
	socklen_t glen = sizeof got;
	memset(&got, 0, sizeof got);
	ssize_t n = recvfrom(s, rbuf, sizeof rbuf, MSG_DONTWAIT, (struct sockaddr *)&got, &glen);
	if (n < 0) {
		fail("%s: recv: %s", what, strerror(errno));
		return;
	}
	if ((size_t)n != len || memcmp(rbuf, want, len) != 0) {
		fail("%s: got %zd bytes \"%.*s\", want %zu \"%.*s\"", what, n, (int)(n > 40 ? 40 : n), rbuf, len,
		     (int)(len > 40 ? 40 : len), (const char *)want);
		return;
	}
	if (from) {
		if (glen != fromlen || memcmp(&got, from, fromlen) != 0)
			fail("%s: sender address differs (len %u want %u, \"%s\")", what, glen, fromlen,
			     got.sun_path[0] ? got.sun_path : got.sun_path + 1);
	}
}

static void expect_str(int s, const char *what, const char *want)
{
	expect_msg(s, what, want, strlen(want), NULL, 0);
}

static void expect_empty(int s, const char *what)
{
	ssize_t n = recv(s, rbuf, sizeof rbuf, MSG_DONTWAIT);
	if (n >= 0)
		fail("%s: an extra message of %zd bytes (\"%.*s\")", what, n, (int)(n > 20 ? 20 : n), rbuf);
	else if (errno != EAGAIN)
		fail("%s: recv: %s", what, strerror(errno));
}

static void expect_eof(int s, const char *what)
{
	ssize_t n = recv(s, rbuf, sizeof rbuf, MSG_DONTWAIT);
	if (n != 0)
		fail("%s: expected EOF, got %zd (%s)", what, n, n < 0 ? strerror(errno) : "data");
}

/* getsockname (peer=0) or getpeername (peer=1) must be exactly the given address. */
static void expect_name(int s, int peer, const char *what, const char *name, int abstract)
{
	struct sockaddr_un want, got;
	socklen_t wlen = name ? mkaddr(&want, name, abstract) : (socklen_t)offsetof(struct sockaddr_un, sun_path);
	if (!name)
		memset(&want, 0, sizeof want), want.sun_family = AF_UNIX;
	socklen_t glen = sizeof got;
	memset(&got, 0, sizeof got);
	int r = peer ? getpeername(s, (struct sockaddr *)&got, &glen) : getsockname(s, (struct sockaddr *)&got, &glen);
	if (r < 0) {
		fail("%s: get%sname: %s", what, peer ? "peer" : "sock", strerror(errno));
		return;
	}
	if (glen != wlen || memcmp(&got, &want, wlen) != 0)
		fail("%s: %s name is \"%s%s\" (len %u), want \"%s%s\" (len %u)", what, peer ? "peer" : "own",
		     glen > 2 && !got.sun_path[0] ? "@" : "", glen > 2 && !got.sun_path[0] ? got.sun_path + 1 : got.sun_path,
		     glen, abstract ? "@" : "", name ? name : "", wlen);
}

/* Both ends of a connected pair still talk both ways. */
static void ping(int a, int b, const char *what)
{
	char m1[64], m2[64];
	snprintf(m1, sizeof m1, "ping-%s", what);
	snprintf(m2, sizeof m2, "pong-%s", what);
	if (send(a, m1, strlen(m1), MSG_NOSIGNAL) != (ssize_t)strlen(m1))
		fail("%s: send after restore: %s", what, strerror(errno));
	if (send(b, m2, strlen(m2), MSG_NOSIGNAL) != (ssize_t)strlen(m2))
		fail("%s: reply after restore: %s", what, strerror(errno));
	expect_str(b, what, m1);
	expect_str(a, what, m2);
}

static int accept_wait(int l, const char *what)
{
	for (int i = 0; i < 500; i++) {
		int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
		if (s >= 0) {
			fcntl(s, F_SETFL, 0);
			return s;
		}
		if (errno != EAGAIN) {
			fail("%s: accept: %s", what, strerror(errno));
			return -1;
		}
		usleep(10000);
	}
	fail("%s: nothing to accept", what);
	return -1;
}

static int mode_outside(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/outside.sock", W);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(s);
	do_connect(s, path, 0);
	signal_ready();
	wait_go();
	must_send(s, "still-here", 10);
	finish();
}

static int mode_rights(void)
{
	int sp[2];
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, sp));
	int pf[2];
	SETUP(pipe(pf));
	SETUP(write(pf[1], "via-fd", 6));
	char data[] = "with-fd";
	struct iovec iov = { data, 7 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &pf[0], sizeof(int));
	SETUP(sendmsg(sp[0], &msg, 0));
	close(pf[0]);
	close(pf[1]);
	signal_ready();
	wait_go();
	char got[16];
	struct iovec riov = { got, sizeof got };
	struct msghdr r = { .msg_iov = &riov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(sp[1], &r, MSG_DONTWAIT);
	CHECK(n == 7 && memcmp(got, "with-fd", 7) == 0, "datagram with the fd: %zd", n);
	c = CMSG_FIRSTHDR(&r);
	if (!c || c->cmsg_type != SCM_RIGHTS) {
		fail("no fd came with the datagram");
	} else {
		int fd;
		memcpy(&fd, CMSG_DATA(c), sizeof fd);
		CHECK(read(fd, got, sizeof got) == 6 && memcmp(got, "via-fd", 6) == 0, "the passed pipe lost its data");
	}
	expect_empty(sp[1], "rights queue");
	finish();
}

static int mode_embryo(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/embryo.sock", W);
	int l = sock_bound(SOCK_STREAM, path, 0);
	SETUP(listen(l, 4));
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(c);
	do_connect(c, path, 0);
	must_send(c, "early", 5);
	signal_ready();
	wait_go();
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("accept: %s", strerror(errno));
	else
		expect_str(s, "data sent before accept", "early");
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "embryo") == 0)
		return mode_embryo();
	if (argc > 2 && strcmp(argv[2], "outside") == 0)
		return mode_outside();
	if (argc > 2 && strcmp(argv[2], "rights") == 0)
		return mode_rights();
	signal(SIGPIPE, SIG_IGN);
	int pid = getpid();
	char srv[4096], d1p[4096], d2p[4096], abs_l[64], abs_c[64], abs_d3[64], abs_p[64];
	snprintf(srv, sizeof srv, "%s/srv.sock", W);
	snprintf(d1p, sizeof d1p, "%s/d1.sock", W);
	snprintf(d2p, sizeof d2p, "%s/d2.sock", W);
	snprintf(abs_l, sizeof abs_l, "ferry-unix-%d", pid);
	snprintf(abs_c, sizeof abs_c, "ferry-unix-%d-cli", pid);
	snprintf(abs_d3, sizeof abs_d3, "ferry-unix-%d-d3", pid);
	snprintf(abs_p, sizeof abs_p, "ferry-unix-%d-pending", pid);

	/* socketpair stream */
	int ss[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, ss));
	int rcv = 65536;
	SETUP(setsockopt(ss[0], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv));
	static char big[150000];
	fill_prng(big, sizeof big, 77);
	must_send(ss[0], big, sizeof big);
	SETUP(recv(ss[1], rbuf, 1000, 0) == 1000 ? 0 : -1);
	must_send(ss[1], "pong", 4);
	SETUP(fcntl(ss[1], F_SETFL, O_NONBLOCK));
	int zero = 0;
	SETUP(setsockopt(ss[1], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero));
	SETUP(recv(ss[1], rbuf, 10, MSG_PEEK) == 10 ? 0 : -1); /* peek offset now 10 */
	/* socketpair dgram */
	int sd[2];
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, sd));
	static char d1000[1000], d70000[70000];
	fill_prng(d1000, sizeof d1000, 5);
	fill_prng(d70000, sizeof d70000, 6);
	must_send(sd[0], "A", 1);
	must_send(sd[0], d1000, sizeof d1000);
	must_send(sd[0], "", 0);
	must_send(sd[0], d70000, sizeof d70000);
	must_send(sd[1], "x", 1);
	/* socketpair seqpacket */
	int sq[2];
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq));
	must_send(sq[0], "r1", 2);
	must_send(sq[0], "record-two", 10);
	/* path listener, accepted pair, pending client */
	int L = sock_bound(SOCK_STREAM, srv, 0);
	SETUP(listen(L, 7));
	SETUP(chmod(srv, 0777));
	SETUP(chown(srv, 1001, 1002));
	int C = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(C);
	do_connect(C, srv, 0);
	int S = accept(L, NULL, NULL);
	SETUP(S);
	int C2 = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(C2);
	do_connect(C2, srv, 0);
	int S2 = accept(L, NULL, NULL);
	SETUP(S2);
	must_send(C2, "gone", 4);
	close(C2);
	int P = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(P);
	do_connect(P, srv, 0);
	must_send(C, "to-server", 9);
	must_send(S, "to-client-1", 11);
	must_send(S, "to-client-2", 11);
	/* abstract seqpacket listener, bound client, accepted */
	int AL = sock_bound(SOCK_STREAM, abs_l, 1);
	SETUP(listen(AL, 3));
	int AC = sock_bound(SOCK_STREAM, abs_c, 1);
	do_connect(AC, abs_l, 1);
	int AS = accept(AL, NULL, NULL);
	SETUP(AS);
	int AP = sock_bound(SOCK_STREAM, abs_p, 1);
	do_connect(AP, abs_l, 1);
	int one = 1;
	SETUP(setsockopt(AS, SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
	struct timeval tmo = { 7, 500000 }; /* a whole number of jiffies */
	SETUP(setsockopt(AS, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo));
	SETUP(setsockopt(AC, SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof tmo));
	must_send(AC, "a1", 2);
	must_send(AS, "a22", 3);
	/* datagram sockets by path and abstract name */
	int D1 = sock_bound(SOCK_DGRAM, d1p, 0);
	int D2 = sock_bound(SOCK_DGRAM, d2p, 0);
	int D3 = sock_bound(SOCK_DGRAM, abs_d3, 1);
	do_connect(D1, d2p, 0);
	must_send(D1, "c1", 2);
	must_send(D1, "c22", 3);
	int U = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(U);
	must_sendto(U, "u333", d2p, 0);
	must_sendto(D2, "back", d1p, 0);
	must_sendto(D1, "to-d3", abs_d3, 1);
	/* a datagram socket connected to a socket outside the process (the test's) */
	int E = -1;
	const char *ext = argc > 2 && strncmp(argv[2], "ext=", 4) == 0 ? argv[2] + 4 : NULL;
	if (ext) {
		E = socket(AF_UNIX, SOCK_DGRAM, 0);
		SETUP(E);
		do_connect(E, ext, 1);
		must_send(E, "ext-before", 10);
	}
	/* a pair whose other end is closed */
	int cl[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, cl));
	must_send(cl[1], "bye", 3);
	close(cl[1]);
	int cq[2];
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, cq));
	must_send(cq[1], "sq-last", 7);
	close(cq[1]);
	/* shutdown */
	int sh[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sh));
	must_send(sh[0], "last", 4);
	SETUP(shutdown(sh[0], SHUT_WR));

	int fl_b = fcntl(ss[1], F_GETFL), fl_a = fcntl(ss[0], F_GETFL);
	int rcv_before;
	socklen_t ol = sizeof rcv_before;
	SETUP(getsockopt(ss[0], SOL_SOCKET, SO_RCVBUF, &rcv_before, &ol));
	signal_ready();
	wait_go();

	/* flags and options */
	CHECK(fcntl(ss[1], F_GETFL) == fl_b && fcntl(ss[0], F_GETFL) == fl_a, "file status flags changed");
	int v = 0;
	ol = sizeof v;
	getsockopt(ss[0], SOL_SOCKET, SO_RCVBUF, &v, &ol);
	CHECK(v == rcv_before, "SO_RCVBUF %d, was %d", v, rcv_before);
	v = 0;
	getsockopt(AS, SOL_SOCKET, SO_PASSCRED, &v, &ol);
	CHECK(v == 1, "SO_PASSCRED lost");
	struct timeval tv1 = { 0, 0 }, tv2 = { 0, 0 };
	socklen_t tl = sizeof tv1;
	getsockopt(AS, SOL_SOCKET, SO_RCVTIMEO, &tv1, &tl);
	tl = sizeof tv2;
	getsockopt(AC, SOL_SOCKET, SO_SNDTIMEO, &tv2, &tl);
	CHECK(tv1.tv_sec == 7 && tv1.tv_usec == 500000 && tv2.tv_sec == 7 && tv2.tv_usec == 500000,
	      "SO_RCVTIMEO %ld.%06ld / SO_SNDTIMEO %ld.%06ld, want 7.500000", (long)tv1.tv_sec, (long)tv1.tv_usec,
	      (long)tv2.tv_sec, (long)tv2.tv_usec);
	int ty = 0;
	getsockopt(sq[0], SOL_SOCKET, SO_TYPE, &ty, &ol);
	CHECK(ty == SOCK_SEQPACKET, "seqpacket socket has type %d", ty);
	getsockopt(sd[0], SOL_SOCKET, SO_TYPE, &ty, &ol);
	CHECK(ty == SOCK_DGRAM, "dgram socket has type %d", ty);

	v = -2;
	ol = sizeof v;
	getsockopt(ss[1], SOL_SOCKET, SO_PEEK_OFF, &v, &ol);
	CHECK(v == 10, "SO_PEEK_OFF %d, want 10", v);
	v = -1;
	SETUP(setsockopt(ss[1], SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v));
	/* socketpair stream: 149000 bytes left, in order */
	size_t got = 0;
	static char rest[150000];
	for (;;) {
		ssize_t n = recv(ss[1], rest + got, sizeof rest - got, MSG_DONTWAIT);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	CHECK(got == 149000 && memcmp(rest, big + 1000, 149000) == 0, "stream pair: %zu bytes came back (want 149000)",
	      got);
	expect_str(ss[0], "stream pair reply", "pong");
	expect_empty(ss[0], "stream pair a");
	ping(ss[0], ss[1], "sp-stream");
	/* dgram pair: boundaries */
	expect_msg(sd[1], "dgram 1", "A", 1, NULL, 0);
	expect_msg(sd[1], "dgram 1000", d1000, sizeof d1000, NULL, 0);
	expect_msg(sd[1], "dgram 0", "", 0, NULL, 0);
	expect_msg(sd[1], "dgram 70000", d70000, sizeof d70000, NULL, 0);
	expect_empty(sd[1], "dgram pair b");
	expect_str(sd[0], "dgram pair a", "x");
	expect_empty(sd[0], "dgram pair a");
	ping(sd[0], sd[1], "sp-dgram");
	/* seqpacket pair */
	expect_str(sq[1], "seqpacket r1", "r1");
	expect_str(sq[1], "seqpacket r2", "record-two");
	expect_empty(sq[1], "seqpacket b");
	ping(sq[0], sq[1], "sp-seqpacket");
	/* path listener and its connections */
	struct stat sst;
	if (stat(srv, &sst) < 0)
		fail("stat %s: %s", srv, strerror(errno));
	else
		CHECK(S_ISSOCK(sst.st_mode) && (sst.st_mode & 07777) == 0777 && sst.st_uid == 1001 && sst.st_gid == 1002,
		      "socket file mode %o owner %d:%d, want socket 777 1001:1002", sst.st_mode, sst.st_uid, sst.st_gid);
	expect_name(L, 0, "listener", srv, 0);
	expect_name(S, 0, "accepted", srv, 0);
	expect_name(S, 1, "accepted's peer", NULL, 0);
	expect_name(C, 1, "client's peer", srv, 0);
	expect_name(C, 0, "client", NULL, 0);
	expect_str(S, "to-server", "to-server");
	expect_str(C, "to-client", "to-client-1to-client-2");
	ping(C, S, "path-conn");
	expect_str(S2, "accepted, client gone", "gone");
	expect_eof(S2, "accepted, client gone");
	expect_name(S2, 0, "accepted, client gone", srv, 0);
	int P2 = accept_wait(L, "pending P");
	if (P2 >= 0) {
		ping(P, P2, "pending");
		expect_name(P, 1, "pending client's peer", srv, 0);
	}
	int T = accept_wait(L, "test's connection (path)");
	if (T >= 0)
		expect_str(T, "from the test (path)", "from-test");
	int N = socket(AF_UNIX, SOCK_STREAM, 0);
	do_connect(N, srv, 0);
	int N2 = accept_wait(L, "new connection (path)");
	if (N2 >= 0)
		ping(N, N2, "new-path");
	/* abstract listener */
	expect_name(AL, 0, "abstract listener", abs_l, 1);
	expect_name(AS, 0, "abstract accepted", abs_l, 1);
	expect_name(AS, 1, "abstract accepted's peer", abs_c, 1);
	expect_name(AC, 0, "abstract client", abs_c, 1);
	expect_name(AC, 1, "abstract client's peer", abs_l, 1);
	expect_str(AS, "a1", "a1");
	expect_empty(AS, "abstract accepted");
	expect_str(AC, "a22", "a22");
	ping(AC, AS, "abstract-conn");
	int AP2 = accept_wait(AL, "pending AP");
	if (AP2 >= 0) {
		expect_name(AP2, 1, "pending AP's accepted end's peer", abs_p, 1);
		expect_name(AP, 0, "pending AP", abs_p, 1);
		ping(AP, AP2, "pending-abstract");
	}
	int AT = accept_wait(AL, "test's connection (abstract)");
	if (AT >= 0)
		expect_str(AT, "from the test (abstract)", "from-test");
	int AN = socket(AF_UNIX, SOCK_STREAM, 0);
	do_connect(AN, abs_l, 1);
	int AN2 = accept_wait(AL, "new connection (abstract)");
	if (AN2 >= 0)
		ping(AN, AN2, "new-abstract");
	/* datagrams with their senders */
	struct sockaddr_un a1, a2;
	socklen_t l1 = mkaddr(&a1, d1p, 0), l2 = mkaddr(&a2, d2p, 0);
	struct sockaddr_un none = { .sun_family = AF_UNIX };
	expect_msg(D2, "c1", "c1", 2, &a1, l1);
	expect_msg(D2, "c22", "c22", 3, &a1, l1);
	expect_msg(D2, "u333", "u333", 4, &none, 0); /* an unnamed sender has no address */
	expect_empty(D2, "d2");
	expect_msg(D1, "back", "back", 4, &a2, l2);
	expect_empty(D1, "d1");
	expect_msg(D3, "to-d3", "to-d3", 5, &a1, l1);
	expect_name(D1, 0, "d1", d1p, 0);
	expect_name(D1, 1, "d1's peer", d2p, 0);
	expect_name(D3, 0, "d3", abs_d3, 1);
	must_send(D1, "again", 5);
	expect_msg(D2, "d1 -> d2 after restore", "again", 5, &a1, l1);
	must_sendto(U, "u-again", d2p, 0);
	expect_str(D2, "u -> d2 after restore", "u-again");
	if (E >= 0) {
		expect_name(E, 1, "outside peer", ext, 1);
		must_send(E, "ext-after", 9);
	}
	/* closed peer, shutdown */
	expect_str(cl[0], "closed peer's data", "bye");
	expect_eof(cl[0], "closed peer");
	expect_str(cq[0], "closed seqpacket peer's record", "sq-last");
	expect_eof(cq[0], "closed seqpacket peer");
	expect_str(sh[1], "shut data", "last");
	expect_eof(sh[1], "shut");
	CHECK(send(sh[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "shut end can still send");
	must_send(sh[1], "still", 5);
	expect_str(sh[0], "shut end receives", "still");
	finish();
}
