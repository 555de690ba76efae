/*
 * clone_files: a child created with clone(CLONE_FILES) shares its parent's fd table.
 * Before ready: the parent opens a pipe (fds p[0], p[1]) and writes "shared" into it.
 * After go, the parent checks that:
 *   - kcmp(KCMP_FILES) still says the two share one fd table;
 *   - an fd the parent opens now shows in the child's /proc/PID/fd;
 *   - an fd the child opens now (on SIGUSR1; its number passed in shared memory) is open in the
 *     parent, on /dev/zero;
 *   - the pipe still holds "shared".
 * Then it ends the child.
 */
#include "common.h"
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <linux/kcmp.h>

static char stack[64 * 1024];
static volatile int *box;
static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
	(void)sig;
	usr1 = 1;
}

static int child_fn(void *arg)
{
	(void)arg;
	for (;;) {
		pause();
		if (usr1) {
			usr1 = 0;
			box[0] = open("/dev/zero", O_RDONLY);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	box = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (box == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	box[0] = -1;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	SETUP(sigaction(SIGUSR1, &sa, NULL));
	int p[2];
	SETUP(pipe(p));
	SETUP(write(p[1], "shared", 6));
	pid_t c = clone(child_fn, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
	SETUP(c);
	if (syscall(SYS_kcmp, getpid(), c, KCMP_FILES, 0, 0) != 0)
		die_setup("kcmp: the child does not share the fd table");
	signal_ready();
	wait_go();

	long k = syscall(SYS_kcmp, getpid(), c, KCMP_FILES, 0, 0);
	CHECK(k == 0, "kcmp(KCMP_FILES) with the child = %ld (%s): the fd table is not shared", k,
	      k < 0 ? strerror(errno) : "different");
	int fd = open("/dev/null", O_RDONLY);
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)c, fd);
	CHECK(access(path, F_OK) == 0, "fd %d opened by the parent is not in the child's table", fd);
	kill(c, SIGUSR1);
	for (int i = 0; i < 500 && box[0] < 0; i++)
		usleep(10000);
	CHECK(box[0] >= 0, "the child did not open its fd (%d)", box[0]);
	if (box[0] >= 0) {
		char link[64] = "", me[64];
		snprintf(me, sizeof me, "/proc/self/fd/%d", box[0]);
		ssize_t n = readlink(me, link, sizeof link - 1);
		if (n > 0)
			link[n] = 0;
		CHECK(n > 0 && strcmp(link, "/dev/zero") == 0, "fd %d opened by the child: in the parent it is \"%s\"",
		      box[0], n > 0 ? link : strerror(errno));
	}
	char buf[16] = "";
	SETUP(fcntl(p[0], F_SETFL, O_NONBLOCK));
	ssize_t n = read(p[0], buf, sizeof buf - 1);
	CHECK(n == 6 && memcmp(buf, "shared", 6) == 0, "the pipe read %zd bytes, want \"shared\"", n);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	finish();
}
