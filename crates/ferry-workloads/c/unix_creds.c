/*
 * unix_creds: the sender's credentials (SCM_CREDENTIALS) of queued unix messages, and where a
 * stream read stops because they change. Needs root (a child changes its uid and gid).
 *   The parent makes a stream and a datagram socketpair and turns SO_PASSCRED on at its ends
 *   (st[0], dg[0]); two children share the other ends:
 *     A  setresgid(2001) + setresuid(1001), then sends "a1" and "a2" on the stream, "da" on dgram
 *     B  (root) then sends "b1" on the stream, "db" on dgram
 *     A  then sends "a3" on the stream
 *   B also sends "nc" on a third (stream) pair before the parent turns SO_PASSCRED on at its end:
 *   the kernel records no credentials for it (pid 0, uid and gid unmapped: 65534);
 *   nobody reads them before the dump. Both children then block in read() on a pipe until the
 *   parent closes it.
 *   G (uid 1002, gid 2002) sends "gone" on a fourth (stream) pair, whose other end the parent
 *   turned SO_PASSCRED on at, and exits; the parent reaps it: the sender is gone, its pid free.
 * After go, the parent reads, with SO_PASSCRED: the stream as three reads "a1a2" (A, 1001, 2001),
 * "b1" (B, 0, 0), "a3" (A, 1001, 2001) (the kernel never glues bytes of different senders into
 * one read), then nothing; the datagrams "da" (A) and "db" (B), then nothing; "gone" from G's
 * pid, 1002, 2002, and G's pid names no process (ESRCH), as before the dump. Pids are the
 * children's as the parent sees them (fork's return values). It also reports what SO_PEERCRED
 * shows on each end it holds (informational).
 */
#include "common.h"
#include <sys/socket.h>
#include <sys/wait.h>

struct want {
	const char *data;
	pid_t pid;
	uid_t uid;
	gid_t gid;
};

static void expect(int s, const char *who, const struct want *w)
{
	char buf[256];
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(struct ucred)) + 64];
	} ctl;
	struct iovec iov = { buf, sizeof buf };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
	ssize_t n = recvmsg(s, &m, MSG_DONTWAIT);
	if (!w) {
		CHECK(n < 0 && errno == EAGAIN, "%s: queue not empty: %zd bytes \"%.*s\"", who, n, (int)(n > 0 ? n : 0), buf);
		return;
	}
	size_t len = strlen(w->data);
	if (n != (ssize_t)len || memcmp(buf, w->data, len) != 0) {
		fail("%s: read %zd bytes \"%.*s\" (%s), want \"%s\"", who, n, (int)(n > 0 ? n : 0), buf,
		     n < 0 ? strerror(errno) : "", w->data);
		return;
	}
	struct ucred *u = NULL;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			u = (struct ucred *)CMSG_DATA(c);
	if (!u) {
		fail("%s: \"%s\" came without SCM_CREDENTIALS", who, w->data);
		return;
	}
	CHECK(u->pid == w->pid && u->uid == w->uid && u->gid == w->gid,
	      "%s: \"%s\" from pid %d uid %u gid %u, want pid %d uid %u gid %u", who, w->data, (int)u->pid,
	      (unsigned)u->uid, (unsigned)u->gid, (int)w->pid, (unsigned)w->uid, (unsigned)w->gid);
}

static void put(int s, const char *m)
{
	if (send(s, m, strlen(m), MSG_NOSIGNAL) != (ssize_t)strlen(m))
		die_setup("send %s: %s", m, strerror(errno));
}

/* Wait for one byte on r (the parent's turn signal), or EOF (exit). */
static int turn(int r)
{
	char k;
	ssize_t n;
	do
		n = read(r, &k, 1);
	while (n < 0 && errno == EINTR);
	return n == 1;
}

static void peercred(int s, const char *who)
{
	struct ucred u;
	socklen_t l = sizeof u;
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &u, &l) == 0)
		fprintf(stderr, "SO_PEERCRED %s: pid %d uid %u gid %u\n", who, (int)u.pid, (unsigned)u.uid,
			(unsigned)u.gid);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (geteuid() != 0)
		die_setup("unix_creds must start as root (euid %d)", (int)geteuid());
	int st[2], dg[2], nc[2], to_a[2], to_b[2], done[2];
	int one = 1;
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, nc));
	SETUP(setsockopt(st[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
	SETUP(setsockopt(dg[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
	SETUP(pipe(to_a));
	SETUP(pipe(to_b));
	SETUP(pipe(done));
	pid_t a = fork();
	SETUP(a);
	if (a == 0) {
		close(st[0]);
		close(dg[0]);
		close(nc[0]);
		close(nc[1]);
		close(to_a[1]);
		close(to_b[0]);
		close(to_b[1]);
		close(done[0]);
		SETUP(setresgid(2001, 2001, 2001));
		SETUP(setresuid(1001, 1001, 1001));
		put(st[1], "a1");
		put(st[1], "a2");
		put(dg[1], "da");
		SETUP(write(done[1], "a", 1));
		if (turn(to_a[0])) {
			put(st[1], "a3");
			SETUP(write(done[1], "a", 1));
		}
		while (turn(to_a[0]))
			;
		_exit(0);
	}
	pid_t b = fork();
	SETUP(b);
	if (b == 0) {
		close(st[0]);
		close(dg[0]);
		close(nc[0]);
		close(to_a[0]);
		close(to_a[1]);
		close(to_b[1]);
		close(done[0]);
		if (turn(to_b[0])) {
			put(st[1], "b1");
			put(dg[1], "db");
			put(nc[1], "nc");
			SETUP(write(done[1], "b", 1));
		}
		while (turn(to_b[0]))
			;
		_exit(0);
	}
	close(st[1]);
	close(dg[1]);
	close(nc[1]);
	close(to_a[0]);
	close(to_b[0]);
	close(done[1]);
	SETUP(turn(done[0]) ? 0 : -1); /* A sent a1 a2 da */
	SETUP(write(to_b[1], "go", 1));
	SETUP(turn(done[0]) ? 0 : -1); /* B sent b1 db */
	SETUP(write(to_a[1], "go", 1));
	SETUP(turn(done[0]) ? 0 : -1); /* A sent a3 */
	SETUP(setsockopt(nc[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
	int gs[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, gs));
	SETUP(setsockopt(gs[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
	pid_t g = fork();
	SETUP(g);
	if (g == 0) {
		close(gs[0]);
		SETUP(setresgid(2002, 2002, 2002));
		SETUP(setresuid(1002, 1002, 1002));
		put(gs[1], "gone");
		_exit(0);
	}
	close(gs[1]);
	int gst;
	SETUP(waitpid(g, &gst, 0));
	if (!WIFEXITED(gst) || WEXITSTATUS(gst) != 0)
		die_setup("child G: %#x", gst);
	peercred(st[0], "stream (before)");
	signal_ready();
	wait_go();
	peercred(st[0], "stream (after)");
	peercred(dg[0], "dgram (after)");
	struct want sa[] = {
		{ "a1a2", a, 1001, 2001 },
		{ "b1", b, 0, 0 },
		{ "a3", a, 1001, 2001 },
	};
	for (unsigned i = 0; i < 3; i++)
		expect(st[0], "stream", &sa[i]);
	expect(st[0], "stream", NULL);
	struct want da[] = {
		{ "da", a, 1001, 2001 },
		{ "db", b, 0, 0 },
	};
	for (unsigned i = 0; i < 2; i++)
		expect(dg[0], "dgram", &da[i]);
	expect(dg[0], "dgram", NULL);
	struct want none = { "nc", 0, 65534, 65534 };
	expect(nc[0], "stream without credentials", &none);
	expect(nc[0], "stream without credentials", NULL);
	struct want gone = { "gone", g, 1002, 2002 };
	expect(gs[0], "stream from a gone sender", &gone);
	CHECK(kill(g, 0) < 0 && errno == ESRCH, "the gone sender's pid %d names a process (%s)", (int)g,
	      kill(g, 0) == 0 ? "alive" : strerror(errno));
	close(to_a[1]);
	close(to_b[1]);
	int status;
	CHECK(waitpid(a, &status, 0) == a && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child A: %#x", status);
	CHECK(waitpid(b, &status, 0) == b && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child B: %#x", status);
	finish();
}
