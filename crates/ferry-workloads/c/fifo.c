/*
 * fifo: named pipes held by a parent and a child, with bytes in flight.
 *  - W/f1: the parent holds a read end (O_NONBLOCK) and a write end (shared with the child
 *    across fork); the child also opened its own write end. 1000 bytes are unread.
 *  - W/f2: the parent holds it O_RDWR, capacity raised to 128 KiB, 100000 bytes unread.
 *  - W/f3: the parent holds the write end, the child sits blocked in read() on its read end.
 * After restore: every fd is the FIFO at its path with its access mode and flags, the unread
 * bytes are there exactly, and the FIFOs still connect the two processes: the parent writes
 * "ping" into f3, the blocked child wakes up and answers "pong" through its own f1 write end.
 */
#include "common.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#define N1 1000
#define N2 100000

static int check_fd(int fd, const char *path, int accmode, int nonblock)
{
	struct stat a, b;
	if (fstat(fd, &a) < 0 || stat(path, &b) < 0)
		return -1;
	int fl = fcntl(fd, F_GETFL);
	if (!S_ISFIFO(a.st_mode) || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		return -2;
	if ((fl & O_ACCMODE) != accmode || !!(fl & O_NONBLOCK) != nonblock)
		return -3;
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char p1[4096], p2[4096], p3[4096];
	snprintf(p1, sizeof p1, "%s/f1", W);
	snprintf(p2, sizeof p2, "%s/f2", W);
	snprintf(p3, sizeof p3, "%s/f3", W);
	SETUP(mkfifo(p1, 0600));
	SETUP(mkfifo(p2, 0600));
	SETUP(mkfifo(p3, 0600));
	int r1 = open(p1, O_RDONLY | O_NONBLOCK);
	SETUP(r1);
	int w1 = open(p1, O_WRONLY);
	SETUP(w1);
	int rw2 = open(p2, O_RDWR);
	SETUP(rw2);
	SETUP(fcntl(rw2, F_SETPIPE_SZ, 1 << 17));
	static unsigned char d1[N1], d2[N2], buf[N2 + 16];
	fill_prng(d1, N1, 11);
	fill_prng(d2, N2, 22);
	SETUP(write(w1, d1, N1) == N1 ? 0 : -1);
	SETUP(write(rw2, d2, N2) == N2 ? 0 : -1);
	int sync[2];
	SETUP(pipe(sync));
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		close(sync[0]);
		int r3 = open(p3, O_RDONLY); /* waits for the parent's writer */
		int own_w1 = open(p1, O_WRONLY);
		if (r3 < 0 || own_w1 < 0)
			_exit(10);
		if (write(sync[1], "r", 1) != 1)
			_exit(11);
		close(sync[1]);
		char b[8] = "";
		ssize_t n = read(r3, b, 4); /* blocked here across the checkpoint */
		if (n != 4 || memcmp(b, "ping", 4) != 0)
			_exit(12);
		if (check_fd(own_w1, p1, O_WRONLY, 0) != 0 || check_fd(r3, p3, O_RDONLY, 0) != 0)
			_exit(13);
		if (write(own_w1, "pong", 4) != 4)
			_exit(14);
		_exit(0);
	}
	close(sync[1]);
	int w3 = open(p3, O_WRONLY);
	SETUP(w3);
	char c;
	SETUP(read(sync[0], &c, 1) == 1 ? 0 : -1);
	close(sync[0]);
	usleep(100 * 1000); /* let the child block in read() */
	signal_ready();
	wait_go();

	int e;
	CHECK((e = check_fd(r1, p1, O_RDONLY, 1)) == 0, "f1 read end: %d", e);
	CHECK((e = check_fd(w1, p1, O_WRONLY, 0)) == 0, "f1 write end: %d", e);
	CHECK((e = check_fd(rw2, p2, O_RDWR, 0)) == 0, "f2: %d", e);
	CHECK((e = check_fd(w3, p3, O_WRONLY, 0)) == 0, "f3 write end: %d", e);
	int n1 = 0, n2 = 0;
	CHECK(ioctl(r1, FIONREAD, &n1) == 0 && n1 == N1, "f1 holds %d bytes, want %d", n1, N1);
	CHECK(ioctl(rw2, FIONREAD, &n2) == 0 && n2 == N2, "f2 holds %d bytes, want %d", n2, N2);
	ssize_t got = read(r1, buf, sizeof buf);
	CHECK(got == N1 && memcmp(buf, d1, N1) == 0, "f1 data differs (%zd bytes)", got);
	size_t off = 0;
	while (off < N2) {
		ssize_t k = read(rw2, buf + off, N2 - off);
		if (k <= 0)
			break;
		off += (size_t)k;
	}
	CHECK(off == N2 && memcmp(buf, d2, N2) == 0, "f2 data differs (%zu bytes)", off);
	CHECK(read(r1, buf, 1) < 0 && errno == EAGAIN, "f1 read end is not non-blocking or has extra data");
	CHECK(write(w3, "ping", 4) == 4, "cannot write into f3: %s", strerror(errno));
	struct pollfd pfd = { .fd = r1, .events = POLLIN };
	CHECK(poll(&pfd, 1, 10000) == 1, "no answer from the child through f1");
	got = read(r1, buf, sizeof buf);
	CHECK(got == 4 && memcmp(buf, "pong", 4) == 0, "child answered %zd bytes", got);
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	finish();
}
