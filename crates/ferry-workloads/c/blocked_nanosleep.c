/*
 * blocked_nanosleep: a process checkpointed while blocked in nanosleep (glibc: clock_nanosleep).
 *
 * It sleeps for an hour with the usual "while EINTR: sleep the remainder" loop. The kernel
 * reports an interrupted sleep as -ERESTART_RESTARTBLOCK, whose restart state lives in the
 * kernel; a restorer may resume the sleep (restart_syscall-like) or turn it into EINTR with the
 * remainder written back, which this loop absorbs (both are accepted and logged). What must hold:
 * the sleep does not end before go, and on go the remainder is sane (not longer than asked,
 * not shorter than the time actually left).
 */
#include "common.h"

#define SLEEP_S 3600

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	struct timespec req = { SLEEP_S, 0 }, rem = { 0, 0 };
	int spurious = 0;
	double t0 = mono_now();
	signal_ready();
	for (;;) {
		if (nanosleep(&req, &rem) == 0) {
			fail("nanosleep(%ld s) returned 0 before go after %.1f s", (long)req.tv_sec, mono_now() - t0);
			break;
		}
		if (errno != EINTR) {
			fail("nanosleep failed: %s", strerror(errno));
			break;
		}
		if (go)
			break;
		spurious++;
		fprintf(stderr, "blocked_nanosleep: nanosleep interrupted without go (remaining %ld.%09ld s): sleeping the rest\n",
			(long)rem.tv_sec, rem.tv_nsec);
		req = rem;
	}
	double elapsed = mono_now() - t0;
	double left = (double)rem.tv_sec + (double)rem.tv_nsec / 1e9;
	fprintf(stderr, "blocked_nanosleep: go after %.2f s, %.2f s left, %d interruption(s) without go\n", elapsed, left,
		spurious);
	CHECK(left > 0 && left <= SLEEP_S, "remaining time %.3f s is outside (0, %d]", left, SLEEP_S);
	CHECK(left >= SLEEP_S - elapsed - 1.0, "remaining time %.3f s is less than the %.3f s actually left", left,
	      SLEEP_S - elapsed);
	CHECK(spurious <= 2, "nanosleep was interrupted %d times without a signal", spurious);
	finish();
}
