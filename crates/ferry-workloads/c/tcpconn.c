/*
 * tcpconn MODE: TCP connections and queues, which ferry refuses unless --tcp-close.
 *   intact:    listener L, a client C connected to L, and A, accepted from L (C <-> A
 *              established). After go, C and A still talk: the dump must have been refused
 *              and the process left as it was.
 *   queued:    listener L and a client C connected but never accepted (waiting in L's accept
 *              queue). After go, L still accepts that very connection.
 *   closed:    L, C, A as in intact, and C2 waiting in L's accept queue; dumped with
 *              --tcp-close. After go: C, A and C2 are closed (no peer, read fails with
 *              ENOTCONN, write with EPIPE), L's queue is empty, and L accepts and serves a new
 *              connection.
 *   udpqueued: a bound UDP socket with one unread datagram. After go it still reads it.
 *   filter:    a UDP socket with a locked classic BPF filter, and a unix datagram socketpair
 *              whose receiving end has a filter that cuts messages to 3 bytes. After go both
 *              filters are there, unchanged, the first still locked, the second still cutting.
 *   ebpf:      a UDP socket with an eBPF filter (SO_ATTACH_BPF): dump must refuse it.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <poll.h>
#include <sys/socket.h>

static struct sockaddr_in laddr;

static int connect_to_l(void)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(c);
	SETUP(connect(c, (struct sockaddr *)&laddr, sizeof laddr));
	return c;
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

static void talk(const char *what, int a, int b)
{
	char buf[8] = { 0 };
	CHECK(write(a, "hello", 5) == 5 && read(b, buf, 5) == 5 && memcmp(buf, "hello", 5) == 0, "%s: data lost", what);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *mode = argc > 2 ? argv[2] : "intact";

	if (strcmp(mode, "filter") == 0) {
		/* UDP: pass everything (locked); unix datagram pair: cut messages to 3 bytes. */
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(u);
		struct sock_filter pass[] = { BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0), BPF_STMT(BPF_RET | BPF_K, 0xffff) };
		struct sock_fprog prog = { .len = 2, .filter = pass };
		SETUP(setsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog));
		int one = 1;
		SETUP(setsockopt(u, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one));
		int sp[2];
		SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, sp));
		struct sock_filter cut[] = { BPF_STMT(BPF_RET | BPF_K, 3) };
		struct sock_fprog prog2 = { .len = 1, .filter = cut };
		SETUP(setsockopt(sp[1], SOL_SOCKET, SO_ATTACH_FILTER, &prog2, sizeof prog2));
		signal_ready();
		wait_go();
		struct sock_filter got[4];
		socklen_t len = 4;
		CHECK(getsockopt(u, SOL_SOCKET, SO_GET_FILTER, got, &len) == 0 && len == 2 &&
			      memcmp(got, pass, sizeof pass) == 0,
		      "the UDP socket's filter is gone or changed (%u instructions)", len);
		int locked = 0;
		socklen_t il = sizeof locked;
		CHECK(getsockopt(u, SOL_SOCKET, SO_LOCK_FILTER, &locked, &il) == 0 && locked == 1, "the filter is not locked");
		int zero = 0;
		CHECK(setsockopt(u, SOL_SOCKET, SO_DETACH_FILTER, &zero, sizeof zero) < 0 && errno == EPERM,
		      "a locked filter could be detached (%s)", strerror(errno));
		len = 4;
		CHECK(getsockopt(sp[1], SOL_SOCKET, SO_GET_FILTER, got, &len) == 0 && len == 1 &&
			      memcmp(got, cut, sizeof cut) == 0,
		      "the unix socket's filter is gone or changed (%u instructions)", len);
		CHECK(send(sp[0], "hello", 5, 0) == 5, "send: %s", strerror(errno));
		char b[8];
		ssize_t n = recv(sp[1], b, sizeof b, MSG_DONTWAIT);
		CHECK(n == 3 && memcmp(b, "hel", 3) == 0, "the unix filter did not cut the message (%zd bytes)", n);
		finish();
	}
	if (strcmp(mode, "ebpf") == 0) {
		/* An eBPF socket filter (r0 = 0xffff; exit), which cannot be read back. */
		struct bpf_insn insns[] = {
			{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0xffff },
			{ .code = BPF_JMP | BPF_EXIT },
		};
		union bpf_attr attr;
		memset(&attr, 0, sizeof attr);
		attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
		attr.insn_cnt = 2;
		attr.insns = (uint64_t)(uintptr_t)insns;
		attr.license = (uint64_t)(uintptr_t)"GPL";
		int pfd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
		SETUP(pfd);
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(u);
		SETUP(setsockopt(u, SOL_SOCKET, SO_ATTACH_BPF, &pfd, sizeof pfd));
		close(pfd);
		signal_ready();
		wait_go();
		finish();
	}
	if (strcmp(mode, "udpqueued") == 0) {
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(u);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		SETUP(bind(u, (struct sockaddr *)&a, sizeof a));
		socklen_t len = sizeof a;
		SETUP(getsockname(u, (struct sockaddr *)&a, &len));
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		SETUP(s);
		SETUP(sendto(s, "dgram", 5, 0, (struct sockaddr *)&a, sizeof a));
		close(s);
		signal_ready();
		wait_go();
		char buf[8] = { 0 };
		CHECK(recv(u, buf, sizeof buf, MSG_DONTWAIT) == 5 && memcmp(buf, "dgram", 5) == 0,
		      "the queued datagram is gone");
		finish();
	}

	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	int one = 1;
	SETUP(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
	laddr.sin_family = AF_INET;
	laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	SETUP(bind(l, (struct sockaddr *)&laddr, sizeof laddr));
	SETUP(listen(l, 8));
	socklen_t len = sizeof laddr;
	SETUP(getsockname(l, (struct sockaddr *)&laddr, &len));

	int c = -1, a = -1, c2 = -1;
	if (strcmp(mode, "queued") == 0) {
		c = connect_to_l();
	} else {
		c = connect_to_l();
		SETUP(a = accept(l, NULL, NULL));
		talk("before: C -> A", c, a);
		if (strcmp(mode, "closed") == 0)
			c2 = connect_to_l();
	}
	fprintf(stderr, "tcpconn %s: L fd %d port %d, C fd %d, A fd %d, C2 fd %d\n", mode, l, ntohs(laddr.sin_port), c,
		a, c2);
	signal_ready();
	wait_go();

	if (strcmp(mode, "intact") == 0) {
		talk("after: C -> A", c, a);
		talk("after: A -> C", a, c);
	} else if (strcmp(mode, "queued") == 0) {
		int x = accept(l, NULL, NULL);
		CHECK(x >= 0, "the queued connection cannot be accepted: %s", strerror(errno));
		if (x >= 0)
			talk("queued C -> accepted", c, x);
	} else {
		check_closed("C", c);
		check_closed("A", a);
		check_closed("C2", c2);
		int fl = fcntl(l, F_GETFL);
		fcntl(l, F_SETFL, fl | O_NONBLOCK);
		int x = accept(l, NULL, NULL);
		if (x >= 0)
			close(x);
		CHECK(x < 0 && errno == EAGAIN, "the listener's queue still held a connection (accept: %d)", x);
		fcntl(l, F_SETFL, fl);
		int n = connect_to_l();
		x = accept(l, NULL, NULL);
		CHECK(x >= 0, "the restored listener does not accept: %s", strerror(errno));
		if (x >= 0) {
			talk("new connection", n, x);
			talk("new connection back", x, n);
		}
	}
	finish();
}
