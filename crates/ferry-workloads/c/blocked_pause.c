/*
 * blocked_pause: a process checkpointed while blocked in pause(2). The kernel reports the
 * interruption as -ERESTARTNOHAND: restored, the process must be back in pause, and pause must
 * return (EINTR) only when the go handler has run.
 */
#include "common.h"

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal_ready();
	/* the harness waits until /proc/PID/syscall shows pause before it sends go */
	int r = pause();
	int err = errno;
	CHECK(go, "pause() returned (%d, %s) without the go signal", r, strerror(err));
	if (go)
		CHECK(r == -1 && err == EINTR, "pause() returned %d (%s), expected EINTR", r, strerror(err));
	finish();
}
