/*
 * inflight: file descriptors in flight (SCM_RIGHTS) in unix sockets' receive queues, whose
 * files processes of the tree still hold:
 *   dgram pair     "before"; "one" + eventfd E (counter 5); "two" + E and a pipe's read end R;
 *                  "after"
 *   (argv[2] "stream": also a stream pair with the writes "s1", "s2" + R, "s3", "s4", B (2000
 *   bytes starting "s5") + E and R, "s6". The reads show the same buffers as before: a 1-byte
 *   read gets "s" and no fd, then "1s2" with R (a buffer with fds starts where it did: not
 *   glued to "s1"), a 4-byte read "s3s4" and no fd, then B with E and R, then "s6" and no fd.
 *   argv[2] "stream-closed": a stream pair whose writer sent "p1", "p2" + E and closed its end:
 *   the dump is refused (the queue cannot be taken off and sent back without the peer); after
 *   it a 1-byte read gets "p", then "1p2" with E, then the end of the stream.)
 *   seqpacket pair "q1" + a memfd M held by a child C (which sent it from its own end of the
 *                  pair, and keeps M open)
 * After restore: every message comes back in order with its boundaries and its fds; a received
 * fd is the same open file description as the one held (E's counter moves on both, R reads what
 * is written into the pipe, M has C's content and inode).
 */
#include "common.h"
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

/* Receive one message (MSG_DONTWAIT) into a buffer of `cap` bytes: its data must be `want`,
 * and it must carry `nfds` fds, returned in fds. */
static void recv_fds_n(int s, const char *what, const char *want, size_t cap, int *fds, int nfds)
{
	static char buf[4096];
	struct iovec iov = { buf, cap < sizeof buf ? cap : sizeof buf };
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0) {
		fail("%s: recvmsg: %s", what, strerror(errno));
		return;
	}
	CHECK((size_t)n == strlen(want) && memcmp(buf, want, (size_t)n) == 0, "%s: got \"%.*s\", want \"%.16s\"", what,
	      (int)(n > 16 ? 16 : n), buf, want);
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k && got < 8; i++, got++)
				if (got < nfds)
					memcpy(&fds[got], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		}
	}
	CHECK(got == nfds, "%s: %d fds came with it, want %d", what, got, nfds);
	CHECK(!(msg.msg_flags & MSG_CTRUNC), "%s: control data truncated", what);
}

static void recv_fds(int s, const char *what, const char *want, int *fds, int nfds)
{
	recv_fds_n(s, what, want, 256, fds, nfds);
}

/* `a` and `b` are the same eventfd: add to one, read the total from the other. */
static void same_eventfd(int a, int b, const char *what)
{
	uint64_t v = 2, got = 0;
	CHECK(write(a, &v, 8) == 8, "%s: write: %s", what, strerror(errno));
	CHECK(read(b, &got, 8) == 8 && got == 7, "%s: counter %llu, want 7 (5 + 2)", what, (unsigned long long)got);
	v = 5;
	CHECK(write(a, &v, 8) == 8, "%s: write back", what);
}

/* `r` reads what is written into the pipe's write end `w`. */
static void same_pipe(int r, int w, const char *what, const char *msg)
{
	char buf[64];
	CHECK(write(w, msg, strlen(msg)) == (ssize_t)strlen(msg), "%s: write: %s", what, strerror(errno));
	ssize_t n = read(r, buf, sizeof buf);
	CHECK(n == (ssize_t)strlen(msg) && memcmp(buf, msg, (size_t)n) == 0, "%s: read %zd bytes", what, n);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int E = eventfd(5, EFD_NONBLOCK);
	SETUP(E);
	int pp[2];
	SETUP(pipe(pp));
	int dg[2], st[2], sq[2];
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq));
	int hold[2], info[2];
	SETUP(pipe(hold));
	SETUP(pipe(info));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		int M = memfd_create("inflight-m", 0);
		if (M < 0 || write(M, "memfd-content", 13) != 13)
			_exit(2);
		send_with_fds(sq[1], "q1", &M, 1);
		char b;
		(void)!read(hold[0], &b, 1);
		/* restored by now: the inode of its memfd, as it is now */
		struct stat s;
		if (fstat(M, &s) < 0 || write(info[1], &s.st_ino, sizeof s.st_ino) != sizeof s.st_ino)
			_exit(3);
		_exit(0);
	}
	send_with_fds(dg[0], "before", NULL, 0);
	send_with_fds(dg[0], "one", &E, 1);
	int two[2] = { E, pp[0] };
	send_with_fds(dg[0], "two", two, 2);
	send_with_fds(dg[0], "after", NULL, 0);
	int stream = argc > 2 && strcmp(argv[2], "stream") == 0;
	int closed = argc > 2 && strcmp(argv[2], "stream-closed") == 0;
	int cl[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, cl));
	if (closed) {
		send_with_fds(cl[0], "p1", NULL, 0);
		send_with_fds(cl[0], "p2", &E, 1);
		close(cl[0]);
	}
	static char big[2001];
	memset(big, 'b', 2000);
	memcpy(big, "s5", 2);
	if (stream) {
		send_with_fds(st[0], "s1", NULL, 0);
		send_with_fds(st[0], "s2", &pp[0], 1);
		send_with_fds(st[0], "s3", NULL, 0);
		send_with_fds(st[0], "s4", NULL, 0);
		send_with_fds(st[0], big, two, 2);
		send_with_fds(st[0], "s6", NULL, 0);
	}
	/* the seqpacket message is in sq[0]'s queue once the child sent it */
	for (int i = 0; i < 500; i++) {
		int q = 0;
		if (ioctl(sq[0], FIONREAD, &q) == 0 && q > 0)
			break;
		usleep(2000);
	}
	signal_ready();
	wait_go();

	int fds[2] = { -1, -1 };
	recv_fds(dg[1], "dgram before", "before", fds, 0);
	recv_fds(dg[1], "dgram one", "one", fds, 1);
	if (fds[0] >= 0)
		same_eventfd(fds[0], E, "dgram one's eventfd");
	fds[0] = fds[1] = -1;
	recv_fds(dg[1], "dgram two", "two", fds, 2);
	if (fds[0] >= 0)
		same_eventfd(E, fds[0], "dgram two's eventfd");
	if (fds[1] >= 0)
		same_pipe(fds[1], pp[1], "dgram two's pipe", "via-dgram");
	recv_fds(dg[1], "dgram after", "after", fds, 0);
	fds[0] = -1;
	if (stream) {
		recv_fds_n(st[1], "stream 1 byte", "s", 1, fds, 0);
		recv_fds_n(st[1], "stream s2", "1s2", 16, fds, 1);
		if (fds[0] >= 0)
			same_pipe(fds[0], pp[1], "stream s2's pipe", "via-stream");
		fds[0] = -1;
		recv_fds_n(st[1], "stream 4 bytes", "s3s4", 4, fds, 0);
		recv_fds_n(st[1], "stream B", big, 4096, fds, 2);
		if (fds[0] >= 0)
			same_eventfd(E, fds[0], "stream B's eventfd");
		if (fds[1] >= 0)
			same_pipe(fds[1], pp[1], "stream B's pipe", "via-stream-b");
		recv_fds_n(st[1], "stream s6", "s6", 16, fds, 0);
		fds[0] = fds[1] = -1;
	}
	if (closed) {
		recv_fds_n(cl[1], "closed stream 1 byte", "p", 1, fds, 0);
		recv_fds_n(cl[1], "closed stream p2", "1p2", 16, fds, 1);
		if (fds[0] >= 0)
			same_eventfd(E, fds[0], "closed stream's eventfd");
		fds[0] = -1;
		recv_fds_n(cl[1], "closed stream's end", "", 16, fds, 0);
	}
	recv_fds(sq[0], "seqpacket q1", "q1", fds, 1);
	CHECK(write(hold[1], "x", 1) == 1, "tell the child");
	ino_t m_ino = 0;
	CHECK(read(info[0], &m_ino, sizeof m_ino) == sizeof m_ino, "the child did not tell its memfd's inode");
	if (fds[0] >= 0) {
		struct stat s;
		char m[32] = { 0 };
		CHECK(fstat(fds[0], &s) == 0 && s.st_ino == m_ino, "the memfd in flight is another file");
		CHECK(pread(fds[0], m, sizeof m, 0) == 13 && memcmp(m, "memfd-content", 13) == 0, "memfd content \"%s\"", m);
	}
	int status;
	CHECK(waitpid(c, &status, 0) == c && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	finish();
}
