/*
 * unix_names: unix sockets whose names are not plain absolute paths of live socket files.
 * Mode (argv[2]):
 *   relative      in the working directory W/rel: a stream listener bound to the relative
 *                 name "rl.sock" (mode 0741) with an accepted connection (data both ways) and a
 *                 client of the tree still waiting to be accepted; a datagram socket bound to
 *                 "sub/rd.sock" (a subdirectory) holding a datagram from an unnamed socket
 *   deleted_peer  a datagram socket X bound to W/x.sock; Y connected to it sent "y1", an
 *                 unnamed Z sent "z1" to it by name; then W/x.sock was unlinked
 *   deleted       a datagram socket Q bound to W/q.sock, then unlinked; a stream listener R
 *                 bound to W/r.sock, unlinked, and a new listener R2 bound to the same path
 * After restore: every socket has its old name (getsockname, getpeername, byte for byte, a
 * relative name relative), queued data and senders are the same, the unlinked names have no
 * file (or the file of the socket that took the path), and the sockets still talk.
 */
#include "common.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t mkaddr(struct sockaddr_un *sa, const char *path)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static int bound(int type, const char *path)
{
	int s = socket(AF_UNIX, type, 0);
	SETUP(s);
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, path);
	unlink(path);
	SETUP(bind(s, (struct sockaddr *)&sa, len));
	return s;
}

static int connected(int type, const char *path)
{
	int s = socket(AF_UNIX, type, 0);
	SETUP(s);
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, path);
	SETUP(connect(s, (struct sockaddr *)&sa, len));
	return s;
}

/* getsockname (peer=0) / getpeername (peer=1) must be exactly `path` (NULL: unnamed). */
static void expect_name(int s, int peer, const char *what, const char *path)
{
	struct sockaddr_un want, got;
	socklen_t wlen = path ? mkaddr(&want, path) : (socklen_t)offsetof(struct sockaddr_un, sun_path);
	socklen_t glen = sizeof got;
	memset(&got, 0, sizeof got);
	int r = peer ? getpeername(s, (struct sockaddr *)&got, &glen) : getsockname(s, (struct sockaddr *)&got, &glen);
	if (r < 0) {
		fail("%s: get%sname: %s", what, peer ? "peer" : "sock", strerror(errno));
		return;
	}
	if (glen != wlen || (path && strcmp(got.sun_path, path) != 0))
		fail("%s: %s name is \"%s\" (len %u), want \"%s\" (len %u)", what, peer ? "peer" : "own", got.sun_path,
		     glen, path ? path : "", wlen);
}

static char rbuf[4096];

/* One message, MSG_DONTWAIT; from: expected sender path, "" for an unnamed sender, NULL: any. */
static void expect_msg(int s, const char *what, const char *want, const char *from)
{
	struct sockaddr_un got;
	socklen_t glen = sizeof got;
	memset(&got, 0, sizeof got);
	ssize_t n = recvfrom(s, rbuf, sizeof rbuf, MSG_DONTWAIT, (struct sockaddr *)&got, &glen);
	if (n < 0) {
		fail("%s: recv: %s", what, strerror(errno));
		return;
	}
	if ((size_t)n != strlen(want) || memcmp(rbuf, want, (size_t)n) != 0) {
		fail("%s: got \"%.*s\", want \"%s\"", what, (int)n, rbuf, want);
		return;
	}
	if (from && (from[0] ? strcmp(got.sun_path, from) != 0 : glen > offsetof(struct sockaddr_un, sun_path)))
		fail("%s: sender \"%s\" (len %u), want \"%s\"", what, got.sun_path, glen, from);
}

static void expect_empty(int s, const char *what)
{
	ssize_t n = recv(s, rbuf, sizeof rbuf, MSG_DONTWAIT);
	if (n >= 0)
		fail("%s: an extra message of %zd bytes", what, n);
	else if (errno != EAGAIN)
		fail("%s: recv: %s", what, strerror(errno));
}

static void must_send(int s, const char *m)
{
	if (send(s, m, strlen(m), MSG_NOSIGNAL) != (ssize_t)strlen(m))
		die_setup("send \"%s\": %s", m, strerror(errno));
}

static void check_send(int s, const char *m, const char *what)
{
	CHECK(send(s, m, strlen(m), MSG_NOSIGNAL) == (ssize_t)strlen(m), "%s: send: %s", what, strerror(errno));
}

static int accept_now(int l, const char *what)
{
	for (int i = 0; i < 200; i++) {
		int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
		if (s >= 0)
			return s;
		if (errno != EAGAIN)
			break;
		usleep(10000);
	}
	fail("%s: accept: %s", what, strerror(errno));
	return -1;
}

static void no_file(const char *path, const char *what)
{
	struct stat st;
	CHECK(lstat(path, &st) < 0 && errno == ENOENT, "%s: %s exists again", what, path);
}

static int mode_relative(void)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/rel", W);
	mkdir(dir, 0755);
	SETUP(chdir(dir));
	mkdir("sub", 0755);
	int L = bound(SOCK_STREAM, "rl.sock");
	SETUP(chmod("rl.sock", 0741));
	SETUP(listen(L, 5));
	int C = connected(SOCK_STREAM, "rl.sock");
	int S = accept(L, NULL, NULL);
	SETUP(S);
	must_send(C, "to-srv");
	must_send(S, "to-cli");
	int P = connected(SOCK_STREAM, "rl.sock");
	int D = bound(SOCK_DGRAM, "sub/rd.sock");
	int U = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(U);
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, "sub/rd.sock");
	SETUP(sendto(U, "u1", 2, 0, (struct sockaddr *)&sa, len));
	signal_ready();
	wait_go();
	char cwd[4096];
	CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, dir) == 0, "cwd is %s, want %s", cwd, dir);
	struct stat st;
	if (lstat("rl.sock", &st) < 0)
		fail("rl.sock: %s", strerror(errno));
	else
		CHECK(S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0741, "rl.sock: mode %o", st.st_mode);
	expect_name(L, 0, "listener", "rl.sock");
	expect_name(S, 0, "accepted", "rl.sock");
	expect_name(S, 1, "accepted's peer", NULL);
	expect_name(C, 1, "client's peer", "rl.sock");
	expect_name(D, 0, "dgram", "sub/rd.sock");
	expect_msg(S, "to-srv", "to-srv", NULL);
	expect_msg(C, "to-cli", "to-cli", NULL);
	expect_msg(D, "u1", "u1", "");
	expect_empty(D, "dgram");
	int P2 = accept_now(L, "pending client");
	if (P2 >= 0) {
		check_send(P, "p", "pending client");
		expect_msg(P2, "pending client's data", "p", NULL);
		expect_name(P, 1, "pending client's peer", "rl.sock");
	}
	int N = connected(SOCK_STREAM, "rl.sock");
	int N2 = accept_now(L, "new connection");
	if (N2 >= 0) {
		check_send(N, "n", "new connection");
		expect_msg(N2, "new connection's data", "n", NULL);
	}
	int V = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(sendto(V, "v", 1, 0, (struct sockaddr *)&sa, len));
	expect_msg(D, "new datagram", "v", "");
	finish();
}

static int mode_deleted_peer(void)
{
	char x[4096];
	snprintf(x, sizeof x, "%s/x.sock", W);
	int X = bound(SOCK_DGRAM, x);
	int Y = connected(SOCK_DGRAM, x);
	must_send(Y, "y1");
	int Z = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(Z);
	struct sockaddr_un sa;
	socklen_t len = mkaddr(&sa, x);
	SETUP(sendto(Z, "z1", 2, 0, (struct sockaddr *)&sa, len));
	SETUP(unlink(x));
	signal_ready();
	wait_go();
	no_file(x, "deleted peer");
	expect_name(X, 0, "x", x);
	expect_name(Y, 1, "y's peer", x);
	expect_msg(X, "y1", "y1", "");
	expect_msg(X, "z1", "z1", "");
	expect_empty(X, "x");
	check_send(Y, "y2", "y after restore");
	expect_msg(X, "y2", "y2", "");
	CHECK(sendto(Z, "z2", 2, 0, (struct sockaddr *)&sa, len) < 0 && errno == ENOENT,
	      "sending to the deleted name did not fail with ENOENT (%s)", strerror(errno));
	finish();
}

static int mode_deleted(void)
{
	char q[4096], r[4096];
	snprintf(q, sizeof q, "%s/q.sock", W);
	snprintf(r, sizeof r, "%s/r.sock", W);
	int Q = bound(SOCK_DGRAM, q);
	SETUP(unlink(q));
	int R = bound(SOCK_STREAM, r);
	SETUP(listen(R, 2));
	SETUP(unlink(r));
	int R2 = bound(SOCK_STREAM, r);
	SETUP(listen(R2, 2));
	struct stat before;
	SETUP(lstat(r, &before));
	signal_ready();
	wait_go();
	no_file(q, "deleted q");
	expect_name(Q, 0, "q", q);
	expect_name(R, 0, "r", r);
	expect_name(R2, 0, "r2", r);
	struct stat st;
	CHECK(lstat(r, &st) == 0 && S_ISSOCK(st.st_mode), "r.sock: not a socket file (%s)", strerror(errno));
	int c = connected(SOCK_STREAM, r);
	int a = accept_now(R2, "r2");
	if (a >= 0) {
		check_send(c, "r2", "r2's connection");
		expect_msg(a, "r2's connection", "r2", NULL);
	}
	fcntl(R, F_SETFL, O_NONBLOCK);
	CHECK(accept(R, NULL, NULL) < 0 && errno == EAGAIN, "the deleted listener got a connection");
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "";
	if (strcmp(mode, "relative") == 0)
		return mode_relative();
	if (strcmp(mode, "deleted_peer") == 0)
		return mode_deleted_peer();
	if (strcmp(mode, "deleted") == 0)
		return mode_deleted();
	die_setup("unknown mode \"%s\"", mode);
}
