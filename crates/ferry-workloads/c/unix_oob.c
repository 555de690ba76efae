/*
 * unix_oob: an out-of-band byte (MSG_OOB) pending in a unix stream socket's queue: "abc", "X"
 * out of band, "def", and with argv[2] "fds" then "ghi" with an eventfd E in flight (a queue
 * dump takes off and sends back). Dump refuses it by name: a peek skips the byte (the image
 * would lack it) and a read that passes it drops it.
 * After go: recv(MSG_OOB) gets "X", the stream reads "abcdef" (then "ghi" with E).
 */
#include "common.h"
#include <sys/eventfd.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int fds = argc > 2 && strcmp(argv[2], "fds") == 0;
	int E = eventfd(5, EFD_NONBLOCK);
	SETUP(E);
	int sp[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sp));
	send_with_fds(sp[0], "abc", NULL, 0);
	if (send(sp[0], "X", 1, MSG_OOB) != 1)
		die_setup("send MSG_OOB: %s", strerror(errno));
	send_with_fds(sp[0], "def", NULL, 0);
	if (fds)
		send_with_fds(sp[0], "ghi", &E, 1);
	signal_ready();
	wait_go();

	char oob = 0;
	ssize_t n = recv(sp[1], &oob, 1, MSG_OOB | MSG_DONTWAIT);
	CHECK(n == 1 && oob == 'X', "recv(MSG_OOB): %zd (%s), byte %#x, want \"X\"", n, n < 0 ? strerror(errno) : "",
	      oob);
	char got[64] = { 0 };
	size_t len = 0;
	int nfds = 0;
	for (;;) {
		char buf[64];
		struct iovec iov = { buf, sizeof buf };
		union {
			char buf[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
		ssize_t r = recvmsg(sp[1], &msg, MSG_DONTWAIT);
		if (r <= 0)
			break;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				nfds += (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		if (len + (size_t)r < sizeof got) {
			memcpy(got + len, buf, (size_t)r);
			len += (size_t)r;
		}
	}
	const char *want = fds ? "abcdefghi" : "abcdef";
	CHECK(len == strlen(want) && memcmp(got, want, len) == 0, "the stream reads \"%s\", want \"%s\"", got, want);
	CHECK(nfds == (fds ? 1 : 0), "%d fds came with the stream, want %d", nfds, fds ? 1 : 0);
	finish();
}
