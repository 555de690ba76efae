/*
 * blocked_read: a process checkpointed while blocked in read(2) on an empty pipe whose both ends
 * it holds. The kernel reports the interrupted read as -ERESTARTSYS; restored, the process must
 * be blocked in read again (not see EINTR). The go handler (SA_RESTART) writes a message into the
 * pipe, so the restarted read returns it. A second pipe holds data written before ready that
 * must still be there.
 */
#include "common.h"

static int pipe_fds[2];
static const char message[] = "go: data written by the SIGUSR2 handler";

static void on_go_write(int sig)
{
	(void)sig;
	if (!go) {
		go = 1;
		ssize_t n = write(pipe_fds[1], message, sizeof message - 1);
		(void)n;
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_go_write;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	SETUP(sigaction(SIGUSR2, &sa, NULL));
	SETUP(pipe(pipe_fds));

	int buffered[2];
	SETUP(pipe(buffered));
	static unsigned char pre[5000];
	fill_prng(pre, sizeof pre, 0x919e);
	if (write(buffered[1], pre, sizeof pre) != (ssize_t)sizeof pre)
		die_setup("write to the buffered pipe: %s", strerror(errno));

	signal_ready();
	char buf[256];
	ssize_t n;
	int interrupted = 0;
	while ((n = read(pipe_fds[0], buf, sizeof buf)) < 0 && errno == EINTR) {
		interrupted++;
		if (!go)
			fprintf(stderr, "blocked_read: read returned EINTR before go\n");
	}
	CHECK(interrupted == 0, "read(2) returned EINTR %d time(s) although it should have been restarted", interrupted);
	CHECK(go, "read(2) returned before go");
	if (n < 0)
		fail("read(2) failed: %s", strerror(errno));
	else
		CHECK((size_t)n == sizeof message - 1 && memcmp(buf, message, (size_t)n) == 0,
		      "read(2) returned %zd bytes \"%.*s\", expected the go message", n, (int)n, buf);

	/* the buffered pipe */
	SETUP(fcntl(buffered[0], F_SETFL, O_NONBLOCK));
	static unsigned char got[6000];
	size_t total = 0;
	while (total < sizeof got) {
		ssize_t m = read(buffered[0], got + total, sizeof got - total);
		if (m <= 0)
			break;
		total += (size_t)m;
	}
	CHECK(total == sizeof pre && memcmp(got, pre, sizeof pre) == 0,
	      "the second pipe held %zu bytes (expected the %zu written before ready)", total, sizeof pre);
	finish();
}
