/*
 * extfd KIND HOW: fd 5 is a pipe end or a unix socket whose other end the test holds (outside
 * the dumped tree). The test starts the workload with that object as stdin; the workload moves
 * it to fd 5 and puts /dev/null on fd 0.
 *   KIND read:  fd 5 is the read end; the test wrote "before-dump" into the pipe before start.
 *   KIND write: fd 5 is the write end; the workload wrote "before-dump" before ready.
 *   KIND unix:  fd 5 is a connected unix stream socket.
 *   KIND file:  fd 5 is a regular file opened by the test, holding "original" (inherit: the test
 *               hands over another file, holding "replacement", by the first one's path key).
 *   KIND tty:   fd 5 is the slave of a pty whose master the test holds (inherit only: writes
 *               "ttyout" to the terminal, the test reads it from the master).
 *   HOW alone:   restored without --inherit-fd: the outside end is gone.
 *                read:  reads "before-dump" (kept unread in the image), then EOF.
 *                write: a write fails with EPIPE (SIGPIPE ignored).
 *   HOW inherit: restored with --inherit-fd: the test holds the other end of a new object.
 *                read:  reads exactly "from-supervisor" (the test wrote it and closed its end),
 *                       then EOF (an inherited pipe gets no bytes from the image, as in CRIU).
 *                write: writes "from-restored" (the test reads it).
 *                unix:  sends "ping", receives "pong".
 *   HOW control: no ferry (the test plays both parts against the original object).
 * Every case also checks fd 5's access mode and that FD_CLOEXEC is still clear.
 */
#include "common.h"
#include <poll.h>
#include <sys/socket.h>

static int read_all(int fd, char *buf, size_t cap)
{
	size_t off = 0;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, 10000);
		if (r == 0) {
			fail("fd 5: no EOF after 10 s (got %zu bytes)", off);
			return -1;
		}
		if (r < 0 && errno == EINTR)
			continue;
		ssize_t n = read(fd, buf + off, cap - 1 - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail("read fd 5: %s", strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		off += (size_t)n;
		if (off >= cap - 1)
			break;
	}
	buf[off] = 0;
	return (int)off;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *kind = argc > 2 ? argv[2] : "read";
	const char *how = argc > 3 ? argv[3] : "control";
	SETUP(dup2(0, 5));
	int nul = open("/dev/null", O_RDONLY);
	SETUP(nul);
	SETUP(dup2(nul, 0));
	close(nul);
	signal(SIGPIPE, SIG_IGN);
	int want_mode = strcmp(kind, "read") == 0 || strcmp(kind, "file") == 0 ? O_RDONLY : strcmp(kind, "write") == 0 ? O_WRONLY : O_RDWR;
	if (strcmp(kind, "write") == 0) {
		const char *msg = "before-dump";
		if (write(5, msg, strlen(msg)) != (ssize_t)strlen(msg))
			die_setup("write before-dump: %s", strerror(errno));
	}
	signal_ready();
	wait_go();

	int fl = fcntl(5, F_GETFL), fdfl = fcntl(5, F_GETFD);
	CHECK(fl >= 0 && (fl & O_ACCMODE) == want_mode, "fd 5: access mode %#x, want %#x", fl & O_ACCMODE, want_mode);
	CHECK(fdfl == 0, "fd 5: FD_CLOEXEC is set (%d)", fdfl);
	char buf[256];
	if (strcmp(kind, "read") == 0) {
		const char *want = strcmp(how, "alone") == 0 ? "before-dump" :
				   strcmp(how, "inherit") == 0 ? "from-supervisor" : "before-dumpfrom-supervisor";
		if (read_all(5, buf, sizeof buf) >= 0)
			CHECK(strcmp(buf, want) == 0, "fd 5 read \"%s\", want \"%s\" then EOF", buf, want);
	} else if (strcmp(kind, "write") == 0) {
		const char *msg = "from-restored";
		ssize_t n = write(5, msg, strlen(msg));
		if (strcmp(how, "alone") == 0)
			CHECK(n < 0 && errno == EPIPE, "write to fd 5 returned %zd (%s), want EPIPE (reader gone)", n,
			      n < 0 ? strerror(errno) : "no error");
		else
			CHECK(n == (ssize_t)strlen(msg), "write to fd 5: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
	} else if (strcmp(kind, "file") == 0) {
		const char *want = strcmp(how, "inherit") == 0 ? "replacement" : "original";
		if (read_all(5, buf, sizeof buf) >= 0)
			CHECK(strcmp(buf, want) == 0, "fd 5 (a file) read \"%s\", want \"%s\"", buf, want);
	} else if (strcmp(kind, "tty") == 0) {
		CHECK(isatty(5), "fd 5 is not a terminal any more");
		CHECK(write(5, "ttyout", 6) == 6, "write to the terminal: %s", strerror(errno));
	} else {
		CHECK(send(5, "ping", 4, 0) == 4, "send ping: %s", strerror(errno));
		struct pollfd p = { .fd = 5, .events = POLLIN };
		int r = poll(&p, 1, 10000);
		ssize_t n = r > 0 ? recv(5, buf, sizeof buf - 1, 0) : -1;
		if (n >= 0)
			buf[n] = 0;
		CHECK(n == 4 && memcmp(buf, "pong", 4) == 0, "recv: %zd (%s), want \"pong\"", n,
		      n < 0 ? (r == 0 ? "timeout" : strerror(errno)) : buf);
	}
	finish();
}
