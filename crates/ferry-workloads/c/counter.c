/*
 * counter: prints "counter N" to stdout once a second, N = 0, 1, 2, ... (the README demo).
 * Without arguments it runs forever. With a work dir it also follows the workload protocol:
 * ready after the first line, and on SIGUSR2 it checks that its counter still equals the number
 * of lines it printed, then exits.
 */
#include "common.h"

int main(int argc, char **argv)
{
	if (argc > 1)
		workload_init(argc, argv);
	else
		install_go_handler(0);
	unsigned long n = 0, printed = 0;
	for (;;) {
		printf("counter %lu\n", n);
		fflush(stdout);
		printed++;
		if (n == 0 && W)
			signal_ready();
		struct timespec ts = { 1, 0 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !go)
			;
		if (go && W)
			break;
		go = 0;
		n++;
	}
	CHECK(n + 1 == printed, "counter is %lu but %lu lines were printed", n, printed);
	finish();
}
