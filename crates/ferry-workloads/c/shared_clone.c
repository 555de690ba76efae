/*
 * shared_clone MODE: state ferry must refuse to dump, then the process must still work.
 *   files: a child created with clone(CLONE_FILES) shares the parent's fd table.
 *   mqueue: a POSIX message queue fd (its /name path does not lead to it).
 * After go: the parent checks the sharing or the queue is still in place (the refused dump left
 * it as it was) and ends the child.
 */
#include "common.h"
#include <mqueue.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>

static char stack[64 * 1024];
static int child_fn(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "files";
	pid_t c = -1;
	mqd_t q = (mqd_t)-1;
	char qname[64];
	snprintf(qname, sizeof qname, "/ferry-e2e-%d", (int)getpid());
	if (strcmp(mode, "mqueue") == 0) {
		q = mq_open(qname, O_RDWR | O_CREAT | O_EXCL, 0600, NULL);
		SETUP(q);
	} else if (strcmp(mode, "files") == 0) {
		c = clone(child_fn, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
		SETUP(c);
	} else {
		die_setup("unknown mode %s", mode);
	}
	signal_ready();
	wait_go();
	if (q != (mqd_t)-1) {
		struct mq_attr a;
		CHECK(mq_getattr(q, &a) == 0, "the queue fd: %s", strerror(errno));
		mq_unlink(qname);
	} else {
		int fd = open("/dev/null", O_RDONLY);
		char path[64];
		snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)c, fd);
		CHECK(access(path, F_OK) == 0, "the child no longer shares the fd table");
		kill(c, SIGKILL);
		waitpid(c, NULL, 0);
	}
	finish();
}
