/*
 * inflight_many: more fds in flight (SCM_RIGHTS) than a small fd table holds. A unix socketpair
 * (argv[2] "stream", else datagrams) has four messages "m1".."m4" queued, each carrying 250
 * copies of one eventfd E (counter 5), then "tail". The test runs ferry with an RLIMIT_NOFILE
 * that holds them once but not twice (a stream's queue is taken off and sent back, beside the
 * peek's copies): the dump must fail and leave the queue as it was.
 * After go: each message comes back by itself with its 250 fds, each of them E (its counter
 * moves on both), then "tail" with none.
 */
#include "common.h"
#include <sys/eventfd.h>
#include <sys/socket.h>

#define NMSG 4
#define PER 250

/* One recvmsg (MSG_DONTWAIT): its data must be `want` and carry `n` fds, each the eventfd `E`. */
static void recv_many(int s, const char *want, int E, int n)
{
	char buf[64];
	struct iovec iov = { buf, sizeof buf };
	union {
		char buf[CMSG_SPACE(253 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	ssize_t got = recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (got < 0) {
		fail("%s: recvmsg: %s", want, strerror(errno));
		return;
	}
	CHECK((size_t)got == strlen(want) && memcmp(buf, want, (size_t)got) == 0, "%s: got \"%.*s\"", want,
	      (int)(got > 16 ? 16 : got), buf);
	CHECK(!(msg.msg_flags & MSG_CTRUNC), "%s: control data truncated", want);
	int k = 0, wrong = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int m = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < m; i++, k++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			/* the same eventfd: what one adds, the other reads */
			uint64_t v = 1, r = 0;
			if (write(fd, &v, 8) != 8 || read(E, &r, 8) != 8 || r != 6)
				wrong++;
			v = 5;
			if (write(E, &v, 8) != 8)
				wrong++;
			close(fd);
		}
	}
	CHECK(k == n, "%s: %d fds came with it, want %d", want, k, n);
	CHECK(wrong == 0, "%s: %d of its fds are not the eventfd", want, wrong);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int stream = argc > 2 && strcmp(argv[2], "stream") == 0;
	int E = eventfd(5, EFD_NONBLOCK);
	SETUP(E);
	int sp[2];
	SETUP(socketpair(AF_UNIX, stream ? SOCK_STREAM : SOCK_DGRAM, 0, sp));
	static int copies[PER];
	for (int i = 0; i < PER; i++)
		copies[i] = E;
	char name[8];
	for (int i = 1; i <= NMSG; i++) {
		snprintf(name, sizeof name, "m%d", i);
		send_with_fds(sp[0], name, copies, PER);
	}
	send_with_fds(sp[0], "tail", NULL, 0);
	signal_ready();
	wait_go();

	for (int i = 1; i <= NMSG; i++) {
		snprintf(name, sizeof name, "m%d", i);
		recv_many(sp[1], name, E, PER);
	}
	recv_many(sp[1], "tail", E, 0);
	finish();
}
