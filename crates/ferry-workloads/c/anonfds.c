/*
 * anonfds: eventfd, timerfd, signalfd and epoll in one process.
 *   eventfd   counter 5 in semaphore mode, O_NONBLOCK: after restore, exactly five reads of 1
 *             then EAGAIN
 *   timerfd   armed for 100 s with a 3 s interval: the interval is the same and the remaining
 *             time went down but not past zero; a second one that expired once (1 unread tick)
 *             still has that tick
 *   signalfd  for SIGUSR1 (blocked), with one SIGUSR1 queued by sigqueue (value 4242) before
 *             the checkpoint: reading the signalfd yields it with its value
 *   epoll     watching the eventfd (data 0xe1) and the signalfd (data 0x51, edge-triggered):
 *             epoll_wait reports both with their data
 */
#include "common.h"
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/epoll.h>

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int efd = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
	SETUP(efd);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	SETUP(tfd);
	struct itimerspec its = { { 3, 0 }, { 100, 0 } };
	SETUP(timerfd_settime(tfd, 0, &its, NULL));
	int tfd2 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	SETUP(tfd2);
	struct itimerspec once = { { 0, 0 }, { 0, 1000 * 1000 } };
	SETUP(timerfd_settime(tfd2, 0, &once, NULL));
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	SETUP(sigprocmask(SIG_BLOCK, &m, NULL));
	int sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
	SETUP(sfd);
	union sigval v = { .sival_int = 4242 };
	SETUP(sigqueue(getpid(), SIGUSR1, v));
	int ep = epoll_create1(0);
	SETUP(ep);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xe1 };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev));
	struct epoll_event ev2 = { .events = EPOLLIN | EPOLLET, .data.u64 = 0x51 };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev2));
	usleep(20 * 1000); /* let tfd2 expire */
	struct itimerspec before;
	SETUP(timerfd_gettime(tfd, &before));
	int fl_e = fcntl(efd, F_GETFL), fl_t = fcntl(tfd, F_GETFL), fl_s = fcntl(sfd, F_GETFL);
	int fd_s = fcntl(sfd, F_GETFD);
	signal_ready();
	wait_go();

	CHECK(fcntl(efd, F_GETFL) == fl_e && fcntl(tfd, F_GETFL) == fl_t && fcntl(sfd, F_GETFL) == fl_s,
	      "file status flags changed");
	CHECK(fcntl(sfd, F_GETFD) == fd_s, "signalfd FD_CLOEXEC changed");
	/* epoll first (reading the fds changes readiness) */
	struct epoll_event got[4];
	int n = epoll_wait(ep, got, 4, 1000);
	int seen_e = 0, seen_s = 0;
	for (int i = 0; i < n; i++) {
		if (got[i].data.u64 == 0xe1 && (got[i].events & EPOLLIN))
			seen_e = 1;
		if (got[i].data.u64 == 0x51 && (got[i].events & EPOLLIN))
			seen_s = 1;
	}
	CHECK(seen_e && seen_s, "epoll_wait returned %d events (eventfd seen %d, signalfd seen %d)", n, seen_e, seen_s);
	/* eventfd: five semaphore reads, then EAGAIN */
	uint64_t val;
	for (int i = 0; i < 5; i++) {
		ssize_t r = read(efd, &val, 8);
		CHECK(r == 8 && val == 1, "eventfd read %d: %zd / %llu", i, r, (unsigned long long)val);
	}
	CHECK(read(efd, &val, 8) < 0 && errno == EAGAIN, "eventfd counter was more than 5");
	/* timerfd */
	struct itimerspec now;
	SETUP(timerfd_gettime(tfd, &now));
	CHECK(now.it_interval.tv_sec == 3 && now.it_interval.tv_nsec == 0, "timerfd interval %ld.%09ld",
	      (long)now.it_interval.tv_sec, now.it_interval.tv_nsec);
	CHECK(now.it_value.tv_sec <= before.it_value.tv_sec && now.it_value.tv_sec >= 60,
	      "timerfd remaining %ld s, was %ld s", (long)now.it_value.tv_sec, (long)before.it_value.tv_sec);
	uint64_t ticks = 0;
	CHECK(read(tfd2, &ticks, 8) == 8 && ticks == 1, "expired timerfd: ticks %llu", (unsigned long long)ticks);
	/* signalfd */
	struct signalfd_siginfo si;
	ssize_t r = read(sfd, &si, sizeof si);
	CHECK(r == (ssize_t)sizeof si && si.ssi_signo == SIGUSR1 && si.ssi_int == 4242 && si.ssi_code == SI_QUEUE,
	      "signalfd read %zd: signo %u value %d code %d", r, si.ssi_signo, si.ssi_int, si.ssi_code);
	finish();
}
