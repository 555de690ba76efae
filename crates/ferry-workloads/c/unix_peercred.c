/*
 * unix_peercred: what unix sockets report as their peer's credentials (SO_PEERCRED: pid, uid,
 * gid; SO_PEERGROUPS; SO_PEERPIDFD). Needs root (a child changes its ids).
 *   A  socketpair made by the parent P (root) before it forks C: P keeps A0, C keeps A1
 *   C  sets its groups {1234, 5678}, gid 1234, uid 1234, then:
 *      B  socketpair made by C: C keeps B0, sends B1 to P over A (P holds it)
 *      K  a stream socket C connects to P's listener L (W/peercred.sock, listen() by P);
 *         P accepts it (Ka): K reports P (its listener's), Ka reports C
 *   D  a child that makes socketpair E, sends both ends to P over a pair X, and exits; P reaps
 *      it: E0 and E1 report a pid that is gone
 *   L  itself reports P (the credentials it took at listen())
 * Each process records what every socket it holds reports, before ready. After go (C is told
 * through a pipe and answers through another) each compares: pid, uid, gid and groups must be
 * the same. SO_PEERPIDFD (when the kernel has it) must still give a pidfd; for D's pair it must
 * name a process that is gone ("Pid: -1"), as before; for a live peer, either that peer or, as
 * documented (docs/ARCHITECTURE.md), a process that is gone — printed on stderr.
 */
#include "common.h"
#include <stddef.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

struct rec {
	const char *what;
	int fd;
	struct ucred cr;
	gid_t groups[16];
	int ngroups;
	int pidfd_pid; /* fdinfo "Pid:" of SO_PEERPIDFD's pidfd; -2: no SO_PEERPIDFD here */
};

static char msgbuf[1024];

static int pidfd_pid(int fd)
{
	int pfd = -1;
	socklen_t len = sizeof pfd;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &len) < 0)
		return errno == ENOPROTOOPT ? -2 : -3;
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pfd);
	ssize_t n = read_file(path, buf, sizeof buf);
	close(pfd);
	char *p = n > 0 ? strstr(buf, "\nPid:") : NULL;
	return p ? atoi(p + 5) : -4;
}

static void take(struct rec *r, const char *what, int fd)
{
	memset(r, 0, sizeof *r);
	r->what = what;
	r->fd = fd;
	socklen_t len = sizeof r->cr;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &r->cr, &len) < 0)
		r->cr.pid = -1;
	len = sizeof r->groups;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, r->groups, &len) == 0)
		r->ngroups = (int)(len / sizeof(gid_t));
	else
		r->ngroups = -1;
	r->pidfd_pid = pidfd_pid(fd);
}

/* Compare with what `before` recorded; the first difference goes into msgbuf (returns 0). */
static int same(const struct rec *before)
{
	struct rec now;
	take(&now, before->what, before->fd);
	const struct ucred *a = &before->cr, *b = &now.cr;
	if (a->pid != b->pid || a->uid != b->uid || a->gid != b->gid) {
		snprintf(msgbuf, sizeof msgbuf, "%s: SO_PEERCRED pid %d uid %d gid %d, was pid %d uid %d gid %d",
			 before->what, b->pid, b->uid, b->gid, a->pid, a->uid, a->gid);
		return 0;
	}
	if (before->ngroups != now.ngroups ||
	    (now.ngroups > 0 && memcmp(before->groups, now.groups, (size_t)now.ngroups * sizeof(gid_t)) != 0)) {
		snprintf(msgbuf, sizeof msgbuf, "%s: SO_PEERGROUPS %d groups (first %d), was %d (first %d)", before->what,
			 now.ngroups, now.ngroups > 0 ? (int)now.groups[0] : -1, before->ngroups,
			 before->ngroups > 0 ? (int)before->groups[0] : -1);
		return 0;
	}
	if (before->pidfd_pid != -2) {
		int ok = now.pidfd_pid == before->pidfd_pid || (before->pidfd_pid > 0 && now.pidfd_pid == -1);
		if (!ok) {
			snprintf(msgbuf, sizeof msgbuf, "%s: SO_PEERPIDFD names pid %d, was %d", before->what,
				 now.pidfd_pid, before->pidfd_pid);
			return 0;
		}
		if (now.pidfd_pid != before->pidfd_pid)
			fprintf(stderr, "%s: SO_PEERPIDFD names a process that is gone (was pid %d: documented)\n",
				before->what, before->pidfd_pid);
	}
	return 1;
}

static void send_fds(int s, const int *fds, int n)
{
	char b = 'x';
	struct iovec iov = { &b, 1 };
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			    .msg_controllen = CMSG_SPACE(n * sizeof(int)) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	if (sendmsg(s, &m, 0) != 1)
		die_setup("sendmsg: %s", strerror(errno));
}

static void recv_fds(int s, int *fds, int n)
{
	char b;
	struct iovec iov = { &b, 1 };
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	if (recvmsg(s, &m, 0) != 1 || !CMSG_FIRSTHDR(&m))
		die_setup("recvmsg: %s", strerror(errno));
	memcpy(fds, CMSG_DATA(CMSG_FIRSTHDR(&m)), n * sizeof(int));
}

static socklen_t addr_of(struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path, sizeof sa->sun_path, "%s/peercred.sock", W);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sa->sun_path) + 1);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int A[2], X[2], go_c[2], ans[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, A));
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, X));
	SETUP(pipe(go_c));
	SETUP(pipe(ans));
	struct sockaddr_un sa;
	socklen_t salen = addr_of(&sa);
	unlink(sa.sun_path);
	int L = socket(AF_UNIX, SOCK_STREAM, 0);
	SETUP(L);
	SETUP(bind(L, (struct sockaddr *)&sa, salen));
	/* C (uid 1234) must reach it */
	SETUP(chmod(W, 0711));
	SETUP(chmod(sa.sun_path, 0777));
	SETUP(listen(L, 4));

	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		close(A[0]);
		close(go_c[1]);
		close(ans[0]);
		gid_t g[2] = { 1234, 5678 };
		if (setgroups(2, g) < 0 || setresgid(1234, 1234, 1234) < 0 || setresuid(1234, 1234, 1234) < 0)
			_exit(2);
		int B[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, B) < 0)
			_exit(2);
		send_fds(A[1], &B[1], 1);
		close(B[1]);
		int K = socket(AF_UNIX, SOCK_STREAM, 0);
		if (K < 0 || connect(K, (struct sockaddr *)&sa, salen) < 0)
			_exit(2);
		struct rec r[3];
		take(&r[0], "C: A1 (pair made by P)", A[1]);
		take(&r[1], "C: B0 (pair made by C)", B[0]);
		take(&r[2], "C: K (connected to P's listener)", K);
		char b;
		if (read(go_c[0], &b, 1) != 1)
			_exit(3);
		const char *out = "ok";
		for (int i = 0; i < 3; i++)
			if (!same(&r[i])) {
				out = msgbuf;
				break;
			}
		(void)!write(ans[1], out, strlen(out));
		_exit(0);
	}
	close(A[1]);
	close(go_c[0]);
	close(ans[1]);
	int B1;
	recv_fds(A[0], &B1, 1);
	int Ka = accept(L, NULL, NULL);
	SETUP(Ka);
	pid_t d = fork();
	SETUP(d);
	if (d == 0) {
		int E[2];
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, E) < 0)
			_exit(2);
		send_fds(X[0], E, 2);
		_exit(0);
	}
	int E[2];
	recv_fds(X[1], E, 2);
	int st;
	SETUP(waitpid(d, &st, 0));
	struct rec r[6];
	take(&r[0], "P: A0 (pair made by P)", A[0]);
	take(&r[1], "P: B1 (pair made by C)", B1);
	take(&r[2], "P: Ka (accepted from C)", Ka);
	take(&r[3], "P: L (its own, from listen())", L);
	take(&r[4], "P: E0 (pair made by D, gone)", E[0]);
	take(&r[5], "P: E1 (pair made by D, gone)", E[1]);
	CHECK(r[1].cr.pid == c && r[1].cr.uid == 1234 && r[1].ngroups == 2, "setup: B1 reports pid %d uid %d",
	      r[1].cr.pid, r[1].cr.uid);
	CHECK(r[4].cr.pid == d, "setup: E0 reports pid %d, want %d", r[4].cr.pid, d);
	signal_ready();
	wait_go();

	for (int i = 0; i < 6; i++)
		if (!same(&r[i]))
			fail("%s", msgbuf);
	CHECK(write(go_c[1], "g", 1) == 1, "tell the child: %s", strerror(errno));
	char got[1024] = { 0 };
	ssize_t n = read(ans[0], got, sizeof got - 1);
	CHECK(n == 2 && strcmp(got, "ok") == 0, "the child: %s", n > 0 ? got : "no answer");
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
	unlink(sa.sun_path);
	finish();
}
