/*
 * vfork_hold: a parent that vforks a child which sleeps for argv[2] seconds (30 by default)
 * before it exits. Until then the parent sits in an uninterruptible (killable) wait that no
 * ptrace interrupt ends: a dump cannot freeze it and must give up after its --timeout,
 * leaving both running. Ready is written just before the vfork; the test waits for state D.
 * On go (after the child exited) the parent passes.
 */
#include "common.h"

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int secs = argc > 2 ? atoi(argv[2]) : 30;
	signal_ready();
	pid_t c = vfork();
	if (c == 0) {
		struct timespec ts = { secs, 0 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	SETUP(c);
	wait_go();
	finish();
}
