/*
 * epoll_shared: one epoll instance shared by a parent and its child (inherited across fork),
 * with targets registered by each of them:
 *   parent: eventfd A at fd 10 (data 0xa), then forks
 *   child:  eventfd B at fd 11 (data 0xb), registered in the shared instance; the parent has a
 *           different file (/dev/null) at fd 11, so the target must be the child's
 * After restore the parent writes A, the child writes B (told through a pipe), and the parent's
 * epoll_wait on the shared instance must report exactly A and B with their data; the child
 * checks the same from its side.
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static int collect(int ep, uint64_t *seen)
{
	struct epoll_event ev[8];
	int n = epoll_wait(ep, ev, 8, 2000);
	*seen = 0;
	for (int i = 0; i < n; i++)
		*seen |= ev[i].data.u64 == 0xa ? 1 : ev[i].data.u64 == 0xb ? 2 : 4;
	return n;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	SETUP(ep);
	SETUP(dup2(eventfd(0, EFD_NONBLOCK), 10));
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xa };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, 10, &ev));
	int tochild[2], toparent[2];
	SETUP(pipe(tochild));
	SETUP(pipe(toparent));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		close(10);
		if (dup2(eventfd(0, EFD_NONBLOCK), 11) != 11)
			_exit(2);
		struct epoll_event e = { .events = EPOLLIN, .data.u64 = 0xb };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, 11, &e) < 0)
			_exit(2);
		if (write(toparent[1], "r", 1) != 1)
			_exit(2);
		char cmd;
		if (read(tochild[0], &cmd, 1) != 1)
			_exit(3);
		uint64_t one = 1;
		if (write(11, &one, 8) != 8)
			_exit(4);
		if (write(toparent[1], "w", 1) != 1)
			_exit(5);
		if (read(tochild[0], &cmd, 1) != 1)
			_exit(6);
		uint64_t seen;
		int n = collect(ep, &seen);
		_exit(n == 2 && seen == 3 ? 0 : 7);
	}
	char r;
	SETUP(read(toparent[0], &r, 1));
	SETUP(dup2(open("/dev/null", O_RDONLY), 11));
	uint64_t seen;
	signal_ready();
	wait_go();
	uint64_t one = 1;
	CHECK(write(10, &one, 8) == 8, "write eventfd A: %s", strerror(errno));
	CHECK(write(tochild[1], "g", 1) == 1, "tell the child");
	CHECK(read(toparent[0], &r, 1) == 1 && r == 'w', "the child did not write B");
	int n = collect(ep, &seen);
	CHECK(n == 2 && seen == 3, "epoll_wait reported %d events, set %#llx (want A and B)", n, (unsigned long long)seen);
	CHECK(write(tochild[1], "g", 1) == 1, "tell the child");
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
	finish();
}
