/*
 * inflight_stream: file descriptors in flight (SCM_RIGHTS) in both directions of a unix stream
 * socketpair, between plain bytes, each buffer carrying fds where it was in the stream.
 *
 * Two pairs get the same writes: st (checkpointed with its queues) and ref (read before ready:
 * the reference). Every read after go takes the sizes of one schedule, so a buffer carrying
 * fds that starts elsewhere (glued to the bytes before it, as a peek shows it) brings its fds
 * with another read, and one that ends elsewhere stops another read.
 *   A: st[0] -> st[1]   "hello-"; "pipe!" + pipe read end R (only in flight: the process
 *                       closed it; "in-the-pipe" unread in the pipe); "xx"; "yyy";
 *                       "file+sock" + regular file F at offset 42 (only in flight) and stream
 *                       socket U0 (only in flight, "queued" in its own queue); 3000 bytes
 *                       "big..." + st[0] itself (a socket in its own peer's queue); "tail".
 *                       3 bytes read before ready (a partly read buffer).
 *   B: st[1] -> st[0]   (st[0] has SO_PASSCRED: reads stop where the sender changes, and say
 *                       who sent) parent "B-start" + eventfd E (2 bytes read before ready: E
 *                       taken, the rest plain); child C "child-1"; C "child-fd" + C's memfd M;
 *                       parent "parent-end".
 * After go: the same (byte count, fds, sender pid) per recvmsg as the reference, the same
 * bytes, and each fd received the right object (R reads "in-the-pipe", F at offset 42, U0 reads
 * "queued" then what is written into U1, st[0]'s inode, M's content).
 */
#include "common.h"
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MAXREADS 256

struct rd {
	int n, nfds, pid;
};

struct seq {
	struct rd r[MAXREADS];
	int count;
	char data[8192];
	size_t len;
	int fds[16];
	int nfds;
};

static void send_fds(int s, const char *data, size_t len, const int *fds, int n)
{
	struct iovec iov = { (void *)data, len };
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (n > 0) {
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(n * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	}
	if (sendmsg(s, &msg, 0) != (ssize_t)len)
		die_setup("sendmsg \"%.8s\": %s", data, strerror(errno));
}

static void send_str(int s, const char *data, const int *fds, int n)
{
	send_fds(s, data, strlen(data), fds, n);
}

/* One recvmsg of at most `cap` bytes (MSG_DONTWAIT) into q; 0 when nothing is queued. */
static int read_one(int s, size_t cap, struct seq *q)
{
	char buf[8192];
	struct iovec iov = { buf, cap < sizeof buf ? cap : sizeof buf };
	union {
		char buf[CMSG_SPACE(8 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return 0;
	struct rd r = { (int)n, 0, -1 };
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k; i++, r.nfds++)
				if (q->nfds < 16)
					memcpy(&q->fds[q->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		}
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred uc;
			memcpy(&uc, CMSG_DATA(c), sizeof uc);
			r.pid = uc.pid;
		}
	}
	CHECK(!(msg.msg_flags & MSG_CTRUNC), "control data truncated");
	if (q->count < MAXREADS)
		q->r[q->count++] = r;
	if (q->len + (size_t)n <= sizeof q->data) {
		memcpy(q->data + q->len, buf, (size_t)n);
		q->len += (size_t)n;
	}
	return 1;
}

/* Read everything queued in `s` with the schedule's sizes. */
static void read_all(int s, struct seq *q)
{
	static const size_t sizes[] = { 2, 3, 4, 1, 6, 5, 9, 2, 4000, 3, 8, 100, 1, 1, 4096 };
	for (int i = 0; read_one(s, sizes[i % (sizeof sizes / sizeof sizes[0])], q); i++)
		;
}

static void compare(const char *what, const struct seq *got, const struct seq *want)
{
	CHECK(got->count == want->count, "%s: %d reads, want %d", what, got->count, want->count);
	for (int i = 0; i < got->count && i < want->count; i++) {
		const struct rd *g = &got->r[i], *w = &want->r[i];
		if (g->n != w->n || g->nfds != w->nfds || g->pid != w->pid) {
			fail("%s: read %d got %d bytes, %d fds, sender %d; want %d bytes, %d fds, sender %d", what, i, g->n,
			     g->nfds, g->pid, w->n, w->nfds, w->pid);
			break;
		}
	}
	CHECK(got->len == want->len && memcmp(got->data, want->data, got->len) == 0, "%s: other bytes (%zu, want %zu)",
	      what, got->len, want->len);
	CHECK(got->nfds == want->nfds, "%s: %d fds in all, want %d", what, got->nfds, want->nfds);
}

static void take(int s, size_t n, const char *want, int nfds)
{
	struct seq q = { 0 };
	read_one(s, n, &q);
	CHECK(q.len == strlen(want) && memcmp(q.data, want, q.len) == 0, "before ready: read \"%.*s\", want \"%s\"",
	      (int)q.len, q.data, want);
	CHECK(q.nfds == nfds, "before ready: %d fds, want %d", q.nfds, nfds);
	for (int i = 0; i < q.nfds; i++)
		close(q.fds[i]);
}

static void expect_read(int fd, const char *what, const char *want)
{
	char buf[64];
	ssize_t n = read(fd, buf, sizeof buf);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0, "%s: read %zd bytes \"%.*s\", want \"%s\"",
	      what, n, (int)(n > 0 ? n : 0), buf, want);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int st[2], ref[2], U[2], pp[2], E, to_c[2], from_c[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, ref));
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, U));
	SETUP(pipe(pp));
	SETUP(E = eventfd(5, 0));
	SETUP(pipe(to_c));
	SETUP(pipe(from_c));
	int on = 1;
	SETUP(setsockopt(st[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on));
	SETUP(setsockopt(ref[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on));
	char path[4096];
	snprintf(path, sizeof path, "%s/f", W);
	int F = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	SETUP(F);
	char content[100];
	for (int i = 0; i < 100; i++)
		content[i] = (char)('a' + i % 26);
	SETUP(write(F, content, sizeof content));
	SETUP(lseek(F, 42, SEEK_SET));
	SETUP(write(pp[1], "in-the-pipe", 11));
	SETUP(write(U[1], "queued", 6));

	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		char b;
		int M = memfd_create("inflight-stream-m", 0);
		if (M < 0 || write(M, "child-memfd", 11) != 11 || read(to_c[0], &b, 1) != 1)
			_exit(2);
		int pair[2] = { st[1], ref[1] };
		for (int i = 0; i < 2; i++) {
			send_str(pair[i], "child-1", NULL, 0);
			send_str(pair[i], "child-fd", &M, 1);
		}
		if (write(from_c[1], "x", 1) != 1 || read(to_c[0], &b, 1) != 1)
			_exit(3);
		_exit(0);
	}

	static char big[3001];
	memset(big, 'b', 3000);
	memcpy(big, "big", 3);
	int pair[2][2] = { { st[0], st[1] }, { ref[0], ref[1] } };
	for (int i = 0; i < 2; i++) {
		int a = pair[i][0], b = pair[i][1];
		int fu[2] = { F, U[0] };
		send_str(a, "hello-", NULL, 0);
		send_str(a, "pipe!", &pp[0], 1);
		send_str(a, "xx", NULL, 0);
		send_str(a, "yyy", NULL, 0);
		send_str(a, "file+sock", fu, 2);
		send_str(a, big, &a, 1);
		send_str(a, "tail", NULL, 0);
		send_str(b, "B-start", &E, 1);
	}
	char x;
	SETUP(write(to_c[1], "x", 1));
	SETUP(read(from_c[0], &x, 1));
	for (int i = 0; i < 2; i++)
		send_str(pair[i][1], "parent-end", NULL, 0);
	/* Only in flight from now on: R, F and U0. */
	close(pp[0]);
	close(F);
	close(U[0]);
	for (int i = 0; i < 2; i++) {
		take(pair[i][1], 3, "hel", 0);
		take(pair[i][0], 2, "B-", 1);
	}
	static struct seq ref_a, ref_b;
	read_all(ref[1], &ref_a);
	read_all(ref[0], &ref_b);
	for (int i = 0; i < ref_a.nfds; i++)
		close(ref_a.fds[i]);
	for (int i = 0; i < ref_b.nfds; i++)
		close(ref_b.fds[i]);
	CHECK(ref_a.nfds == 4 && ref_b.nfds == 1, "reference: %d and %d fds, want 4 and 1", ref_a.nfds, ref_b.nfds);
	if (failures)
		die_setup("%s", first_failure);
	close(ref[0]);
	close(ref[1]);
	signal_ready();
	wait_go();

	static struct seq a, b;
	read_all(st[1], &a);
	read_all(st[0], &b);
	compare("A (st[0] -> st[1])", &a, &ref_a);
	compare("B (st[1] -> st[0], with credentials)", &b, &ref_b);
	if (a.nfds == 4) {
		expect_read(a.fds[0], "R, the pipe in flight", "in-the-pipe");
		CHECK(lseek(a.fds[1], 0, SEEK_CUR) == 42, "F: offset %lld, want 42", (long long)lseek(a.fds[1], 0, SEEK_CUR));
		expect_read(a.fds[1], "F", "qrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuv");
		expect_read(a.fds[2], "U0's own queue", "queued");
		CHECK(write(U[1], "ping", 4) == 4, "write U1: %s", strerror(errno));
		expect_read(a.fds[2], "U0 after a write into U1", "ping");
		struct stat s1, s2;
		CHECK(fstat(a.fds[3], &s1) == 0 && fstat(st[0], &s2) == 0 && s1.st_ino == s2.st_ino,
		      "the socket in flight is not st[0]");
	}
	if (b.nfds == 1) {
		char m[32] = { 0 };
		CHECK(pread(b.fds[0], m, sizeof m, 0) == 11 && memcmp(m, "child-memfd", 11) == 0, "M: \"%s\"", m);
	}
	CHECK(write(to_c[1], "x", 1) == 1, "tell the child");
	int status;
	CHECK(waitpid(c, &status, 0) == c && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	finish();
}
