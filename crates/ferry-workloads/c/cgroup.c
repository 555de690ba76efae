/*
 * cgroup: a process tree in cgroups of its own. The parent creates W-named cgroups in the v1
 * `pids` hierarchy (pids.max 64) and in the cgroup v2 tree, moves itself there, starts a
 * thread, and forks a child that moves into a sub-cgroup (pids only). Each records its
 * /proc/self/cgroup (and the thread's) before ready; after go each checks that its membership
 * is unchanged and (unless argv[2] is "recreated": the harness deleted the cgroups between dump
 * and restore, so ferry made empty new ones) that pids.max is still 64. The parent collects
 * the child's verdict from its exit status, then moves back to the root cgroups and removes
 * what it created.
 */
#include "common.h"
#include <dirent.h>
#include <pthread.h>
#include <sys/wait.h>

static char v1[256], v2[256], sub[300];

static int read_text(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int recreated = argc > 2 && strcmp(argv[2], "recreated") == 0;
	snprintf(v1, sizeof v1, "/sys/fs/cgroup/pids/ferry-e2e-%d", (int)getpid());
	snprintf(v2, sizeof v2, "/sys/fs/cgroup/unified/ferry-e2e-%d", (int)getpid());
	snprintf(sub, sizeof sub, "%s/child", v1);
	SETUP(mkdir(v1, 0755));
	SETUP(mkdir(v2, 0755));
	SETUP(mkdir(sub, 0755));
	char p[400];
	snprintf(p, sizeof p, "%s/pids.max", v1);
	write_str(p, "64");
	cgroup_join(v1);
	cgroup_join(v2);
	pthread_t t;
	if (pthread_create(&t, NULL, idle, NULL))
		die_setup("pthread_create");
	static char mine[4096], thread[4096], now[4096];
	int go_pipe[2], up[2];
	SETUP(pipe(go_pipe));
	SETUP(pipe(up));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		cgroup_join(sub);
		static char before[4096], after[4096];
		if (read_text("/proc/self/cgroup", before, sizeof before) || write(up[1], "c", 1) != 1)
			_exit(3);
		char b;
		if (read(go_pipe[0], &b, 1) != 1 || read_text("/proc/self/cgroup", after, sizeof after))
			_exit(4);
		if (strcmp(before, after) != 0) {
			fprintf(stderr, "child cgroups now:\n%s\nwere:\n%s\n", after, before);
			_exit(1);
		}
		_exit(0);
	}
	char b;
	SETUP(read(up[0], &b, 1));
	if (read_text("/proc/self/cgroup", mine, sizeof mine))
		die_setup("read /proc/self/cgroup");
	/* the thread's own view */
	char ttid[64];
	DIR *d = opendir("/proc/self/task");
	if (!d)
		die_setup("opendir task");
	struct dirent *e;
	long other = 0;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atol(e->d_name) != (long)getpid())
			other = atol(e->d_name);
	closedir(d);
	snprintf(ttid, sizeof ttid, "/proc/self/task/%ld/cgroup", other);
	if (!other || read_text(ttid, thread, sizeof thread))
		die_setup("read the thread's cgroup");
	signal_ready();
	wait_go();
	CHECK(read_text("/proc/self/cgroup", now, sizeof now) == 0 && strcmp(now, mine) == 0,
	      "the process's cgroups changed: now %s", now);
	CHECK(read_text(ttid, now, sizeof now) == 0 && strcmp(now, thread) == 0, "the thread's cgroups changed: now %s",
	      now);
	if (!recreated) {
		snprintf(p, sizeof p, "%s/pids.max", v1);
		CHECK(read_text(p, now, sizeof now) == 0 && strcmp(now, "64\n") == 0, "pids.max is %s", now);
	}
	CHECK(write(go_pipe[1], "g", 1) == 1, "tell the child");
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child: status %#x", st);
	cgroup_join("/sys/fs/cgroup/pids");
	cgroup_join("/sys/fs/cgroup/unified");
	rmdir(sub);
	rmdir(v1);
	rmdir(v2);
	finish();
}
