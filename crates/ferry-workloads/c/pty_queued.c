/*
 * pty_queued: a pty pair (both ends held by the process) with bytes queued in both directions.
 *   output: "out-line-1\nout2" written to the slave (canonical mode, ECHO and ONLCR on: the
 *           master sees "out-line-1\r\nout2"), not read by the master;
 *   input:  "in-line-1\n^Din-partial" written to the master: the slave has one complete line,
 *           an end-of-file mark and a line being typed; their echo goes to the master's side too.
 * After go: the master reads exactly what it would have read (no byte lost or echoed twice);
 * the slave reads "in-line-1\n", then end-of-file (a read of 0 bytes), then, once the master ends the typed line with "-end\n",
 * "in-partial-end\n"; the slave's settings are unchanged.
 */
#include "common.h"
#include <sys/ioctl.h>
#include <termios.h>

static const char OUT[] = "out-line-1\nout2";
static const char IN[] = "in-line-1\n\004in-partial"; /* (^D: an end-of-file mark, not echoed) */
static const char MASTER_SEES[] = "out-line-1\r\nout2in-line-1\r\nin-partial";

static int inq(int fd)
{
	int n = -1;
	ioctl(fd, FIONREAD, &n);
	return n;
}

/* Read what is there now (non-blocking fd; a few short waits for the line discipline). */
static ssize_t read_all(int fd, char *buf, size_t len)
{
	size_t got = 0;
	for (int idle = 0; idle < 20 && got < len;) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n > 0) {
			got += (size_t)n;
			idle = 0;
			continue;
		}
		if (n < 0 && errno != EAGAIN)
			return -1;
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		idle++;
	}
	return (ssize_t)got;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
	SETUP(m);
	SETUP(grantpt(m));
	SETUP(unlockpt(m));
	char *name = ptsname(m);
	if (!name)
		die_setup("ptsname");
	int s = open(name, O_RDWR | O_NOCTTY | O_NONBLOCK);
	SETUP(s);
	struct termios t0, t1;
	SETUP(tcgetattr(s, &t0));
	if (!(t0.c_lflag & ICANON) || !(t0.c_lflag & ECHO) || !(t0.c_oflag & ONLCR))
		die_setup("the new pty is not in canonical mode with echo and ONLCR");
	SETUP(write(s, OUT, strlen(OUT)) == (ssize_t)strlen(OUT) ? 0 : -1);
	SETUP(write(m, IN, strlen(IN)) == (ssize_t)strlen(IN) ? 0 : -1);
	for (int i = 0; i < 200 && (inq(m) != (int)strlen(MASTER_SEES) || inq(s) != 10); i++) {
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	if (inq(m) != (int)strlen(MASTER_SEES) || inq(s) != 10)
		die_setup("queued: master %d bytes (expected %zu), slave %d (expected 10)", inq(m), strlen(MASTER_SEES),
			  inq(s));
	signal_ready();
	wait_go();

	char buf[256];
	ssize_t n = read_all(m, buf, sizeof buf - 1);
	buf[n > 0 ? n : 0] = 0;
	CHECK(n == (ssize_t)strlen(MASTER_SEES) && !memcmp(buf, MASTER_SEES, strlen(MASTER_SEES)),
	      "master read %zd bytes \"%s\", expected \"%s\"", n, buf, "out-line-1\\r\\nout2in-line-1\\r\\nin-partial");
	n = read(s, buf, sizeof buf - 1);
	buf[n > 0 ? n : 0] = 0;
	CHECK(n == 10 && !memcmp(buf, "in-line-1\n", 10), "slave's first read gave %zd bytes \"%s\", expected the line in-line-1",
	      n, buf);
	n = read(s, buf, sizeof buf - 1);
	CHECK(n == 0, "slave's second read gave %zd (errno %d), expected the end-of-file mark (0)", n, n < 0 ? errno : 0);
	CHECK(write(m, "-end\n", 5) == 5, "write to the master: %s", strerror(errno));
	n = read_all(s, buf, 15);
	buf[n > 0 ? n : 0] = 0;
	CHECK(n == 15 && !memcmp(buf, "in-partial-end\n", 15), "slave's third read gave %zd bytes \"%s\", expected in-partial-end",
	      n, buf);
	SETUP(tcgetattr(s, &t1));
	CHECK(t0.c_iflag == t1.c_iflag && t0.c_oflag == t1.c_oflag && t0.c_lflag == t1.c_lflag &&
		      t0.c_cflag == t1.c_cflag && !memcmp(t0.c_cc, t1.c_cc, sizeof t0.c_cc),
	      "the slave's settings changed");
	finish();
}
