/*
 * signals: signal state.
 *   handlers   SIGUSR1: SA_SIGINFO|SA_RESTART|SA_ONSTACK, sa_mask {SIGINT, SIGQUIT}
 *              SIGHUP:  SA_NODEFER|SA_RESETHAND, sa_mask {SIGTERM}
 *              SIGRTMIN+1..+3: SA_SIGINFO
 *   ignored    SIGWINCH, SIGPIPE
 *   default    SIGCHLD, with SA_NOCLDSTOP|SA_NOCLDWAIT (not in /proc's SigCgt/SigIgn)
 *   blocked    SIGUSR1, SIGINT, SIGRTMIN+1, SIGRTMIN+2, SIGRTMIN+3 (SIGUSR2, go, stays unblocked)
 *   pending    SIGRTMIN+1 twice (sigqueue values 111, 222), SIGRTMIN+2 (333), SIGUSR1 (kill:
 *              SI_USER), and thread-directed SIGRTMIN+3 (rt_tgsigqueueinfo, 444)
 *   altstack   a 64 KiB sigaltstack; with argv[2] = "noaltstack" none at all: after restore
 *              sigaltstack must still say SS_DISABLE (a restorer must not leave its own) and the
 *              SA_ONSTACK handler runs on the normal stack
 * After go: every sigaction (handler, flags, mask, restorer) and the altstack read the same; the
 * blocked mask and /proc/self/status's signal lines are unchanged; the pending signals come out
 * of sigtimedwait in order with their siginfo; then the handlers run as configured (on the
 * altstack, with their masks, SA_RESETHAND resets). It waits for go by polling, not sigsuspend,
 * so that a restarted sigsuspend cannot re-apply the mask and hide a lost one.
 */
#include "common.h"
#include <sys/syscall.h>

#define ALT_SIZE (64 << 10)

static char *altstack;
static volatile sig_atomic_t h1_count, h1_value, h1_code, h1_onstack, h1_mask_ok;
static volatile sig_atomic_t h2_count, h2_mask_ok;

static void h1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	char local;
	sigset_t m;
	h1_count++;
	h1_value = si->si_value.sival_int;
	h1_code = si->si_code;
	h1_onstack = &local >= altstack && &local < altstack + ALT_SIZE;
	sigprocmask(SIG_BLOCK, NULL, &m);
	h1_mask_ok = sigismember(&m, SIGINT) && sigismember(&m, SIGQUIT) && sigismember(&m, SIGUSR1);
}

static void h2(int sig)
{
	(void)sig;
	sigset_t m;
	h2_count++;
	sigprocmask(SIG_BLOCK, NULL, &m);
	h2_mask_ok = sigismember(&m, SIGTERM) && !sigismember(&m, SIGHUP);
}

static void hrt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
}

static void set_action(int sig, void *handler, int flags, int m1, int m2)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = handler;
	else
		sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (m1)
		sigaddset(&sa.sa_mask, m1);
	if (m2)
		sigaddset(&sa.sa_mask, m2);
	SETUP(sigaction(sig, &sa, NULL));
}

static struct sigaction actions0[_NSIG];

static int query(int sig, struct sigaction *out)
{
	memset(out, 0, sizeof *out);
	return sigaction(sig, NULL, out);
}

static const char *sig_keys[] = { "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:" };

static void expect_info(int sig, int code, int value, const char *what)
{
	sigset_t set;
	siginfo_t si;
	struct timespec zero = { 0, 0 };
	sigemptyset(&set);
	sigaddset(&set, sig);
	memset(&si, 0, sizeof si);
	int got = sigtimedwait(&set, &si, &zero);
	if (got != sig) {
		fail("pending %s: not pending (%s)", what, got < 0 ? strerror(errno) : "other signal");
		return;
	}
	CHECK(si.si_code == code, "pending %s: si_code %d, was %d", what, si.si_code, code);
	CHECK(si.si_pid == getpid(), "pending %s: si_pid %d, was %d", what, (int)si.si_pid, (int)getpid());
	CHECK(si.si_uid == getuid(), "pending %s: si_uid %d, was %d", what, (int)si.si_uid, (int)getuid());
	if (code == SI_QUEUE)
		CHECK(si.si_value.sival_int == value, "pending %s: si_value %d, was %d", what, si.si_value.sival_int, value);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const int rt1 = SIGRTMIN + 1, rt2 = SIGRTMIN + 2, rt3 = SIGRTMIN + 3;

	const int use_altstack = !(argc > 2 && strcmp(argv[2], "noaltstack") == 0);
	altstack = malloc(ALT_SIZE);
	if (!altstack)
		die_setup("malloc");
	stack_t ss = { .ss_sp = altstack, .ss_size = ALT_SIZE, .ss_flags = 0 };
	if (use_altstack)
		SETUP(sigaltstack(&ss, NULL));
	else {
		stack_t cur;
		SETUP(sigaltstack(NULL, &cur));
		if (!(cur.ss_flags & SS_DISABLE))
			die_setup("an alternate signal stack is set up although none was asked for");
	}
	set_action(SIGUSR1, (void *)h1, SA_SIGINFO | SA_RESTART | SA_ONSTACK, SIGINT, SIGQUIT);
	set_action(SIGHUP, (void *)h2, SA_NODEFER | SA_RESETHAND, SIGTERM, 0);
	set_action(rt1, (void *)hrt, SA_SIGINFO, 0, 0);
	set_action(rt2, (void *)hrt, SA_SIGINFO, 0, 0);
	set_action(rt3, (void *)hrt, SA_SIGINFO, 0, 0);
	/* ferry's restore traps with int3 while all signals are blocked: the kernel's forced
	 * SIGTRAP would reset this handler to SIG_DFL if ferry did not put it back */
	set_action(SIGTRAP, (void *)h2, SA_RESTART, SIGTERM, 0);
	set_action(SIGWINCH, (void *)SIG_IGN, 0, 0, 0);
	set_action(SIGPIPE, (void *)SIG_IGN, 0, 0, 0);
	/* SIG_DFL, but with flags that change what the kernel does (ferry must read this one) */
	set_action(SIGCHLD, (void *)SIG_DFL, SA_NOCLDSTOP | SA_NOCLDWAIT, 0, 0);

	sigset_t blocked0;
	sigemptyset(&blocked0);
	sigaddset(&blocked0, SIGUSR1);
	sigaddset(&blocked0, SIGINT);
	sigaddset(&blocked0, rt1);
	sigaddset(&blocked0, rt2);
	sigaddset(&blocked0, rt3);
	sigaddset(&blocked0, SIGTRAP);
	SETUP(sigprocmask(SIG_SETMASK, &blocked0, NULL));

	SETUP(sigqueue(getpid(), rt1, (union sigval){ .sival_int = 111 }));
	SETUP(sigqueue(getpid(), rt1, (union sigval){ .sival_int = 222 }));
	SETUP(sigqueue(getpid(), rt2, (union sigval){ .sival_int = 333 }));
	SETUP(kill(getpid(), SIGUSR1));
	/* pending while ferry's restore traps with int3 (a SIGTRAP of its own each time) */
	SETUP(kill(getpid(), SIGTRAP));
	siginfo_t info;
	memset(&info, 0, sizeof info);
	info.si_signo = rt3;
	info.si_code = SI_QUEUE;
	info.si_pid = getpid();
	info.si_uid = getuid();
	info.si_value.sival_int = 444;
	SETUP((int)syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), rt3, &info));

	for (int s = 1; s < _NSIG; s++)
		query(s, &actions0[s]);
	sigset_t pending0;
	SETUP(sigpending(&pending0));
	char status0[5][256];
	for (int i = 0; i < 5; i++) {
		SETUP(status_line(sig_keys[i], status0[i], sizeof status0[i]));
		fprintf(stderr, "signals: %s\n", status0[i]);
	}

	signal_ready();
	wait_go_polling();

	/* the blocked mask first: nothing below may change it before it is read */
	sigset_t blocked;
	sigprocmask(SIG_BLOCK, NULL, &blocked);
	for (int s = 1; s < _NSIG; s++)
		CHECK(sigismember(&blocked, s) == sigismember(&blocked0, s), "signal %d is %sblocked, was %sblocked", s,
		      sigismember(&blocked, s) ? "" : "not ", sigismember(&blocked0, s) ? "" : "not ");
	char line[256];
	for (int i = 0; i < 5; i++)
		CHECK(status_line(sig_keys[i], line, sizeof line) == 0 && strcmp(line, status0[i]) == 0,
		      "/proc/self/status \"%s\", was \"%s\"", line, status0[i]);

	for (int s = 1; s < _NSIG; s++) {
		struct sigaction now;
		if (s == SIGKILL || s == SIGSTOP || query(s, &now) < 0)
			continue;
		struct sigaction *was = &actions0[s];
		CHECK(now.sa_handler == was->sa_handler, "signal %d: handler %p, was %p", s, (void *)now.sa_handler,
		      (void *)was->sa_handler);
		CHECK(now.sa_flags == was->sa_flags, "signal %d: sa_flags %#x, was %#x", s, now.sa_flags, was->sa_flags);
		for (int m = 1; m < _NSIG; m++)
			if (sigismember(&now.sa_mask, m) != sigismember(&was->sa_mask, m)) {
				fail("signal %d: signal %d is %sin sa_mask, was %sin it", s, m,
				     sigismember(&now.sa_mask, m) ? "" : "not ", sigismember(&was->sa_mask, m) ? "" : "not ");
				break;
			}
		CHECK(now.sa_restorer == was->sa_restorer, "signal %d: sa_restorer %p, was %p", s, (void *)now.sa_restorer,
		      (void *)was->sa_restorer);
	}
	stack_t now_ss;
	memset(&now_ss, 0, sizeof now_ss);
	if (sigaltstack(NULL, &now_ss) < 0)
		fail("sigaltstack: %s", strerror(errno));
	else if (use_altstack)
		CHECK(now_ss.ss_sp == altstack && now_ss.ss_size == ALT_SIZE && now_ss.ss_flags == 0,
		      "sigaltstack is %p/%zu/flags %#x, was %p/%d/0", now_ss.ss_sp, now_ss.ss_size, now_ss.ss_flags, altstack,
		      ALT_SIZE);
	else if (!(now_ss.ss_flags & SS_DISABLE)) {
		fail("an alternate signal stack %p/%zu (flags %#x) appeared; there was none", now_ss.ss_sp, now_ss.ss_size,
		     now_ss.ss_flags);
		finish(); /* running an SA_ONSTACK handler on it would likely crash before the verdict */
	}

	sigset_t pending;
	sigpending(&pending);
	for (int s = 1; s < _NSIG; s++)
		CHECK(sigismember(&pending, s) == sigismember(&pending0, s), "signal %d is %spending, was %spending", s,
		      sigismember(&pending, s) ? "" : "not ", sigismember(&pending0, s) ? "" : "not ");
	expect_info(rt1, SI_QUEUE, 111, "SIGRTMIN+1 #1");
	expect_info(rt1, SI_QUEUE, 222, "SIGRTMIN+1 #2");
	expect_info(rt2, SI_QUEUE, 333, "SIGRTMIN+2");
	expect_info(rt3, SI_QUEUE, 444, "thread-directed SIGRTMIN+3");
	expect_info(SIGUSR1, SI_USER, 0, "SIGUSR1");
	expect_info(SIGTRAP, SI_USER, 0, "SIGTRAP");
	sigpending(&pending);
	for (int s = 1; s < _NSIG; s++)
		CHECK(!sigismember(&pending, s), "signal %d is still pending after its queued instances were taken", s);

	/* the handlers run as configured */
	SETUP(sigqueue(getpid(), SIGUSR1, (union sigval){ .sival_int = 555 }));
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_UNBLOCK, &usr1, NULL); /* delivered here */
	CHECK(h1_count == 1, "SIGUSR1 handler ran %d times, expected 1", (int)h1_count);
	CHECK(h1_value == 555 && h1_code == SI_QUEUE, "SIGUSR1 handler got value %d code %d", (int)h1_value, (int)h1_code);
	if (use_altstack)
		CHECK(h1_onstack, "SIGUSR1 handler (SA_ONSTACK) did not run on the alternate stack");
	else
		CHECK(!h1_onstack, "SIGUSR1 handler ran on an alternate stack that was never set up");
	CHECK(h1_mask_ok, "SIGUSR1 handler ran without SIGINT, SIGQUIT and SIGUSR1 blocked");
	raise(SIGHUP);
	CHECK(h2_count == 1, "SIGHUP handler ran %d times, expected 1", (int)h2_count);
	CHECK(h2_mask_ok, "SIGHUP handler ran without SIGTERM blocked or with SIGHUP blocked (SA_NODEFER)");
	struct sigaction hup;
	CHECK(query(SIGHUP, &hup) == 0 && hup.sa_handler == SIG_DFL, "SIGHUP handler was not reset (SA_RESETHAND)");
	struct sigaction pipe_act;
	if (query(SIGPIPE, &pipe_act) == 0 && pipe_act.sa_handler == SIG_IGN)
		raise(SIGPIPE); /* ignored: nothing happens */
	finish();
}
