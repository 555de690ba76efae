/*
 * timers: interval timers and POSIX timers, all far from firing during a test.
 *   itimers   REAL 50 s / interval 40 s, VIRTUAL 100 s / 20 s, PROF 110 s / 30 s
 *   POSIX     id 0 created and deleted (a hole: ids must be preserved, not renumbered), then
 *             t1 CLOCK_MONOTONIC, SIGRTMIN+4 value 0xabc, 45 s / interval 10 s
 *             t2 CLOCK_REALTIME absolute now+70 s, SIGRTMIN+5 value 0xdef, one-shot
 *             t3 CLOCK_BOOTTIME, SIGEV_NONE, 90 s
 *             t4 CLOCK_MONOTONIC, SIGRTMIN+6, disarmed
 * After go: /proc/self/timers reads the same (ids, signals, values, clocks), each timer id is
 * valid with its interval unchanged and a remaining time no longer than at ready and no shorter
 * than that minus the time passed; no timer fired.
 */
#include "common.h"
#include <sys/time.h>

static volatile sig_atomic_t fired[_NSIG];

static void on_timer(int sig)
{
	fired[sig]++;
}

static double tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double ts_s(struct timespec ts)
{
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* /proc/self/timers lists timers newest first; sort its records so creation order does not matter */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void sort_records(char *text)
{
	static char copy[8192];
	char *rec[64];
	int n = 0;
	snprintf(copy, sizeof copy, "%s", text);
	for (char *p = copy; p && *p && n < 64;) {
		rec[n++] = p;
		p = strstr(p + 1, "\nID:");
		if (p) {
			*p = 0;
			p++;
		}
	}
	qsort(rec, (size_t)n, sizeof rec[0], cmp_str);
	text[0] = 0;
	for (int i = 0; i < n; i++) {
		strcat(text, rec[i]);
		size_t len = strlen(text);
		if (len && text[len - 1] != '\n')
			strcat(text, "\n");
	}
}

static timer_t make_timer(clockid_t clock, int notify, int sig, int value)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_int = value;
	timer_t t;
	if (timer_create(clock, &sev, &t) < 0)
		die_setup("timer_create(clock %d): %s", (int)clock, strerror(errno));
	return t;
}

static void arm(timer_t t, int flags, double value, double interval)
{
	struct itimerspec its;
	its.it_value.tv_sec = (time_t)value;
	its.it_value.tv_nsec = (long)((value - (double)(time_t)value) * 1e9);
	its.it_interval.tv_sec = (time_t)interval;
	its.it_interval.tv_nsec = 0;
	if (timer_settime(t, flags, &its, NULL) < 0)
		die_setup("timer_settime: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const int sigs[] = { SIGALRM, SIGVTALRM, SIGPROF, SIGRTMIN + 4, SIGRTMIN + 5, SIGRTMIN + 6 };
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_timer;
		SETUP(sigaction(sigs[i], &sa, NULL));
	}

	const int which[3] = { ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF };
	const char *iname[3] = { "ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF" };
	const long ivalue[3] = { 50, 100, 110 }, iinterval[3] = { 40, 20, 30 };
	for (int i = 0; i < 3; i++) {
		struct itimerval it = { { iinterval[i], 0 }, { ivalue[i], 0 } };
		SETUP(setitimer(which[i], &it, NULL));
	}

	timer_t hole = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 6, 0);
	SETUP(timer_delete(hole));
	timer_t t[4];
	const char *tname[4] = { "t1 (MONOTONIC)", "t2 (REALTIME, absolute)", "t3 (BOOTTIME, SIGEV_NONE)", "t4 (disarmed)" };
	t[0] = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 4, 0xabc);
	t[1] = make_timer(CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN + 5, 0xdef);
	t[2] = make_timer(CLOCK_BOOTTIME, SIGEV_NONE, 0, 0);
	t[3] = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 6, 0x123);
	arm(t[0], 0, 45, 10);
	struct timespec now_rt;
	clock_gettime(CLOCK_REALTIME, &now_rt);
	arm(t[1], TIMER_ABSTIME, (double)now_rt.tv_sec + 70, 0);
	arm(t[2], 0, 90, 0);

	/* record */
	struct itimerval it0[3];
	struct itimerspec ts0[4];
	double t_rec = mono_now();
	for (int i = 0; i < 3; i++)
		SETUP(getitimer(which[i], &it0[i]));
	for (int i = 0; i < 4; i++)
		SETUP(timer_gettime(t[i], &ts0[i]));
	static char timers0[8192], timers1[8192];
	SETUP(read_file("/proc/self/timers", timers0, sizeof timers0));
	sort_records(timers0);
	fprintf(stderr, "timers: ids %ld %ld %ld %ld (deleted %ld)\n%s", (long)(intptr_t)t[0], (long)(intptr_t)t[1],
		(long)(intptr_t)t[2], (long)(intptr_t)t[3], (long)(intptr_t)hole, timers0);

	signal_ready();
	wait_go();

	double passed = mono_now() - t_rec;
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		CHECK(fired[sigs[i]] == 0, "signal %d fired %d time(s): a timer expired early", sigs[i], (int)fired[sigs[i]]);
	if (read_file("/proc/self/timers", timers1, sizeof timers1) >= 0)
		sort_records(timers1);
	CHECK(strcmp(timers0, timers1) == 0,
	      "/proc/self/timers differs: now\n%s\nwas\n%s", timers1, timers0);
	for (int i = 0; i < 3; i++) {
		struct itimerval it;
		if (getitimer(which[i], &it) < 0) {
			fail("getitimer %s: %s", iname[i], strerror(errno));
			continue;
		}
		double v = tv_s(it.it_value), v0 = tv_s(it0[i].it_value);
		/*
		 * REAL counts wall time; VIRTUAL and PROF count CPU time, of which little passes. Setting
		 * a CPU itimer adds one tick to the value (kernel/time/itimer.c), so a restorer that sets
		 * the value it read may overshoot by a tick (at most 10 ms).
		 */
		int cpu = which[i] != ITIMER_REAL;
		double lo = cpu ? v0 - 2.0 : v0 - passed - 1.0, hi = cpu ? v0 + 0.0101 : v0;
		CHECK(v > 0 && v <= hi && v >= lo, "%s: %.3f s left, %.3f s at ready (%.3f s passed)", iname[i], v, v0, passed);
		CHECK(tv_s(it.it_interval) == tv_s(it0[i].it_interval), "%s: interval %.6f s, was %.6f s", iname[i],
		      tv_s(it.it_interval), tv_s(it0[i].it_interval));
	}
	for (int i = 0; i < 4; i++) {
		struct itimerspec its;
		if (timer_gettime(t[i], &its) < 0) {
			fail("timer_gettime %s id %ld: %s", tname[i], (long)(intptr_t)t[i], strerror(errno));
			continue;
		}
		double v = ts_s(its.it_value), v0 = ts_s(ts0[i].it_value);
		if (v0 == 0)
			CHECK(v == 0, "%s: armed (%.3f s left), was disarmed", tname[i], v);
		else
			CHECK(v > 0 && v <= v0 && v >= v0 - passed - 1.0, "%s: %.3f s left, %.3f s at ready (%.3f s passed)",
			      tname[i], v, v0, passed);
		CHECK(ts_s(its.it_interval) == ts_s(ts0[i].it_interval), "%s: interval %.9f s, was %.9f s", tname[i],
		      ts_s(its.it_interval), ts_s(ts0[i].it_interval));
		CHECK(timer_getoverrun(t[i]) == 0, "%s: overrun count %d", tname[i], timer_getoverrun(t[i]));
	}
	/* the deleted id stays free */
	struct itimerspec its;
	CHECK(timer_gettime(hole, &its) < 0 && errno == EINVAL, "the deleted timer id %ld exists", (long)(intptr_t)hole);
	finish();
}
