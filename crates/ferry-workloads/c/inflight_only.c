/*
 * inflight_only: files in flight (SCM_RIGHTS) that no process holds any more: the sender closes
 * each fd right after sendmsg, so only the message keeps the file open.
 *   dgram pair D (D0 sends, D1 receives):
 *     "pipe-r"    + the read end of pipe P, 5 bytes "p-old" unread; its write end stays at Pw
 *     "pipe-both" + both ends of pipe Q with "q-data" unread (no process holds either)
 *     "sock"      + S1, one end of a stream pair (S0 stays): S1's queue holds "to-s1", S0's
 *                   "to-s0"
 *     "event"     + eventfd E (counter 9) twice; "event2" + E once more
 *   seqpacket pair Q (Q0 sends, Q1 receives):
 *     "file"      + W/inflight_only.data ("0123456789", O_RDWR, offset 4)
 *     "ghost"     + W/inflight_only.ghost ("ghost-content", offset 2), deleted since
 *     "memfd"     + memfd "inflight-only" ("memfd-content", offset 3)
 *     "nested"    + N1, one end of a seqpacket pair (N0 stays), whose queue holds "inner" + a
 *                   memfd M2 ("m2") and K1, one end of a dgram pair (K0 closed), whose queue
 *                   holds "deep" + eventfd E2 (counter 3): three levels
 * After restore every message comes back in order with its fds, each the same kind of file
 * with its state (unread bytes, offsets, flags, content, counter, connection, queue), the
 * three copies of E one file, and the pipes and sockets still connected to what stayed.
 *
 * argv[2] "epoll": also "epoll" + an epoll instance, closed since, in D: the dump must be
 * refused (not carried in flight), and after it the message and its fd are still there.
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

/* Send and close: only the message holds the files now. */
static void send_close(int s, const char *data, const int *fds, int n)
{
	send_with_fds(s, data, fds, n);
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* Receive one message (MSG_DONTWAIT): its data must be `want` and it must carry `nfds` fds
 * (into fds; -1 for those missing). Returns 0 if it matched. */
static int recv_fds(int s, const char *what, const char *want, int *fds, int nfds)
{
	char buf[256];
	struct iovec iov = { buf, sizeof buf };
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	for (int i = 0; i < nfds; i++)
		fds[i] = -1;
	ssize_t n = recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0) {
		fail("%s: recvmsg: %s", what, strerror(errno));
		return -1;
	}
	int ok = (size_t)n == strlen(want) && memcmp(buf, want, (size_t)n) == 0;
	CHECK(ok, "%s: got \"%.*s\", want \"%s\"", what, (int)n, buf, want);
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k; i++, got++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (got < nfds)
					fds[got] = fd;
			}
		}
	}
	CHECK(got == nfds, "%s: %d fds came with it, want %d", what, got, nfds);
	CHECK(!(msg.msg_flags & MSG_CTRUNC), "%s: control data truncated", what);
	return ok && got == nfds ? 0 : -1;
}

static void expect_read(int fd, const char *what, const char *want)
{
	char buf[64] = { 0 };
	ssize_t n = read(fd, buf, sizeof buf - 1);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0, "%s: read \"%s\" (%zd), want \"%s\"",
	      what, buf, n, want);
}

static void expect_pread(int fd, const char *what, const char *want)
{
	char buf[64] = { 0 };
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0, "%s: content \"%s\", want \"%s\"", what,
	      buf, want);
}

static void expect_empty(int s, const char *what)
{
	char b[8];
	ssize_t n = recv(s, b, sizeof b, MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "%s: more in the queue (%zd)", what, n);
}

static int memfd_with(const char *name, const char *content, off_t off)
{
	int m = memfd_create(name, 0);
	if (m < 0 || write(m, content, strlen(content)) != (ssize_t)strlen(content) || lseek(m, off, SEEK_SET) != off)
		die_setup("memfd %s: %s", name, strerror(errno));
	return m;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int with_epoll = argc > 2 && strcmp(argv[2], "epoll") == 0;
	int D[2], Q[2], S[2], N[2], K[2], P[2], Pq[2];
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, D));
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, Q));
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, S));
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, N));
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, K));
	SETUP(pipe(P));
	SETUP(pipe(Pq));
	SETUP(write(P[1], "p-old", 5));
	SETUP(write(Pq[1], "q-data", 6));
	SETUP(write(S[0], "to-s1", 5));
	SETUP(write(S[1], "to-s0", 5));
	int E = eventfd(9, EFD_NONBLOCK);
	int E2 = eventfd(3, EFD_NONBLOCK);
	SETUP(E);
	SETUP(E2);

	char path[4096], ghost[4096];
	snprintf(path, sizeof path, "%s/inflight_only.data", W);
	snprintf(ghost, sizeof ghost, "%s/inflight_only.ghost", W);
	int F = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	SETUP(F);
	SETUP(write(F, "0123456789", 10));
	SETUP(lseek(F, 4, SEEK_SET));
	struct stat fst;
	SETUP(fstat(F, &fst));
	int G = open(ghost, O_RDWR | O_CREAT | O_TRUNC, 0600);
	SETUP(G);
	SETUP(write(G, "ghost-content", 13));
	SETUP(lseek(G, 2, SEEK_SET));
	int M = memfd_with("inflight-only", "memfd-content", 3);
	int M2 = memfd_with("inflight-m2", "m2", 0);

	send_close(D[0], "pipe-r", &P[0], 1);
	send_close(D[0], "pipe-both", Pq, 2);
	send_close(D[0], "sock", &S[1], 1);
	int ee[2] = { E, E };
	send_with_fds(D[0], "event", ee, 2);
	send_close(D[0], "event2", &E, 1);
	send_close(Q[0], "file", &F, 1);
	send_close(Q[0], "ghost", &G, 1);
	SETUP(unlink(ghost));
	send_close(Q[0], "memfd", &M, 1);
	/* three levels: E2 in K1's queue, K1 (and M2) in N1's queue, N1 in Q1's queue */
	send_close(K[0], "deep", &E2, 1);
	close(K[0]);
	int mk[2] = { M2, K[1] };
	send_close(N[0], "inner", mk, 2);
	send_close(Q[0], "nested", &N[1], 1);
	if (with_epoll) {
		int ep = epoll_create1(0);
		SETUP(ep);
		send_close(D[0], "epoll", &ep, 1);
	}
	signal_ready();
	wait_go();

	int fds[2];
	if (recv_fds(D[1], "pipe-r", "pipe-r", fds, 1) == 0) {
		CHECK((fcntl(fds[0], F_GETFL) & O_ACCMODE) == O_RDONLY, "pipe-r: not a read end");
		expect_read(fds[0], "pipe-r: unread bytes", "p-old");
		CHECK(write(P[1], "p-new", 5) == 5, "pipe-r: write: %s", strerror(errno));
		expect_read(fds[0], "pipe-r: from the write end held", "p-new");
		close(fds[0]);
	}
	if (recv_fds(D[1], "pipe-both", "pipe-both", fds, 2) == 0) {
		expect_read(fds[0], "pipe-both: unread bytes", "q-data");
		CHECK(write(fds[1], "q-new", 5) == 5, "pipe-both: write: %s", strerror(errno));
		expect_read(fds[0], "pipe-both: one pipe", "q-new");
		close(fds[0]);
		close(fds[1]);
	}
	if (recv_fds(D[1], "sock", "sock", fds, 1) == 0) {
		int type = 0;
		socklen_t len = sizeof type;
		CHECK(getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM, "sock: type %d",
		      type);
		expect_read(fds[0], "sock: its queue", "to-s1");
		expect_read(S[0], "sock: its peer's queue", "to-s0");
		CHECK(write(fds[0], "back", 4) == 4, "sock: write: %s", strerror(errno));
		expect_read(S[0], "sock: still connected", "back");
		close(fds[0]);
	}
	int e3 = -1;
	if (recv_fds(D[1], "event", "event", fds, 2) == 0 && recv_fds(D[1], "event2", "event2", &e3, 1) == 0) {
		uint64_t v = 1, got = 0;
		CHECK(write(fds[0], &v, 8) == 8, "event: write: %s", strerror(errno));
		CHECK(read(fds[1], &got, 8) == 8 && got == 10, "event: counter %llu, want 10 (9 + 1)",
		      (unsigned long long)got);
		v = 4;
		CHECK(write(e3, &v, 8) == 8, "event2: write: %s", strerror(errno));
		got = 0;
		CHECK(read(fds[0], &got, 8) == 8 && got == 4, "event2: counter %llu, want 4: another eventfd",
		      (unsigned long long)got);
		CHECK(fcntl(fds[0], F_GETFL) & O_NONBLOCK, "event: O_NONBLOCK lost");
	}
	if (recv_fds(Q[1], "file", "file", fds, 1) == 0) {
		struct stat s;
		CHECK(fstat(fds[0], &s) == 0 && s.st_ino == fst.st_ino && s.st_dev == fst.st_dev, "file: another file");
		CHECK(lseek(fds[0], 0, SEEK_CUR) == 4, "file: offset %lld, want 4", (long long)lseek(fds[0], 0, SEEK_CUR));
		CHECK((fcntl(fds[0], F_GETFL) & (O_ACCMODE | O_APPEND)) == O_RDWR, "file: flags %#x",
		      fcntl(fds[0], F_GETFL));
		expect_read(fds[0], "file: from its offset", "456789");
	}
	if (recv_fds(Q[1], "ghost", "ghost", fds, 1) == 0) {
		struct stat s;
		CHECK(fstat(fds[0], &s) == 0 && s.st_nlink == 0 && s.st_size == 13, "ghost: nlink %d size %lld",
		      (int)s.st_nlink, (long long)s.st_size);
		CHECK(lseek(fds[0], 0, SEEK_CUR) == 2, "ghost: offset %lld, want 2", (long long)lseek(fds[0], 0, SEEK_CUR));
		expect_pread(fds[0], "ghost", "ghost-content");
	}
	if (recv_fds(Q[1], "memfd", "memfd", fds, 1) == 0) {
		char link[64], lp[64];
		snprintf(lp, sizeof lp, "/proc/self/fd/%d", fds[0]);
		ssize_t n = readlink(lp, link, sizeof link - 1);
		link[n > 0 ? n : 0] = 0;
		CHECK(strncmp(link, "/memfd:inflight-only", 20) == 0, "memfd: link %s", link);
		CHECK(lseek(fds[0], 0, SEEK_CUR) == 3, "memfd: offset %lld, want 3", (long long)lseek(fds[0], 0, SEEK_CUR));
		expect_pread(fds[0], "memfd", "memfd-content");
	}
	int n1 = -1;
	if (recv_fds(Q[1], "nested", "nested", &n1, 1) == 0) {
		int type = 0;
		socklen_t len = sizeof type;
		CHECK(getsockopt(n1, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET,
		      "nested: type %d", type);
		if (recv_fds(n1, "nested: inner", "inner", fds, 2) == 0) {
			expect_pread(fds[0], "nested: inner memfd", "m2");
			int e2 = -1;
			if (recv_fds(fds[1], "nested: deep", "deep", &e2, 1) == 0) {
				uint64_t got = 0;
				CHECK(read(e2, &got, 8) == 8 && got == 3, "nested: deep eventfd counter %llu, want 3",
				      (unsigned long long)got);
			}
			expect_empty(fds[1], "nested: deep queue");
		}
		CHECK(send(N[0], "later", 5, 0) == 5, "nested: send: %s", strerror(errno));
		char b[16];
		CHECK(recv(n1, b, sizeof b, MSG_DONTWAIT) == 5 && memcmp(b, "later", 5) == 0,
		      "nested: its peer N0 is not connected to it");
	}
	if (with_epoll && recv_fds(D[1], "epoll", "epoll", fds, 1) == 0) {
		char link[64], lp[64];
		snprintf(lp, sizeof lp, "/proc/self/fd/%d", fds[0]);
		ssize_t n = readlink(lp, link, sizeof link - 1);
		link[n > 0 ? n : 0] = 0;
		CHECK(strcmp(link, "anon_inode:[eventpoll]") == 0, "epoll: link %s", link);
	}
	expect_empty(D[1], "dgram queue");
	expect_empty(Q[1], "seqpacket queue");
	unlink(path);
	finish();
}
