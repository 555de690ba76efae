/*
 * userns: a process in a user namespace (made by its caller: `unshare --user --map-root-user
 * [--uts --net --ipc --cgroup] userns W view`, or `ferry run --userns`), checking after restore
 * that its view is the same as before the dump, as seen from inside:
 *   uid_map, gid_map, setgroups; getresuid/getresgid/getgroups; the capability sets and
 *   securebits; /proc/self/cgroup; the host name; and, for its uts, net, ipc, cgroup and mnt
 *   namespaces, whether its user namespace owns them (ioctl NS_GET_USERNS); its pid
 *   namespace's owner is checked as "pid" (and "pid_for_children").
 *
 *   userns W view         as started
 *   userns W drop         first becomes uid 1000 / gid 1000 with groups 2000, 2001 inside
 *                          (capabilities dropped): the ids must be mapped
 *   userns W cgroupns DIR  joins cgroup DIR (cgroup.procs), unshares a cgroup namespace there,
 *                          then moves to DIR/sub (seen inside as /sub)
 *   userns W threads      with 3 more threads, each checking after restore that gettid()
 *                          gives its id from before the dump (restored with clone3(set_tid))
 *   userns W mountproc    after restore, mounts a proc for its pid namespace on W/procmnt
 *                          (it must own its mount and pid namespaces) and finds itself in it
 *   userns W threads-mountproc  both
 *   userns W clocks       also: CLOCK_MONOTONIC and CLOCK_BOOTTIME must have moved from ready
 *                          to go as CLOCK_REALTIME did, within 1 s (for a time namespace of its
 *                          own: `unshare -U -r --time --monotonic N`; a restore that left it
 *                          out, or copied offsets meant for another machine, jumps by them)
 *
 * The view includes the owner of its time namespace ("time", "time_for_children").
 */
#include "common.h"
#include <grp.h>
#include <pthread.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

#define NS_GET_USERNS 0xb701

static void add_file(char *out, size_t cap, const char *label, const char *path)
{
	char buf[4096];
	ssize_t n = read_file(path, buf, sizeof buf);
	size_t used = strlen(out);
	snprintf(out + used, cap - used, "%s:\n%s\n", label, n >= 0 ? buf : "(unreadable)");
}

static ino_t ino_of_fd(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

static void view(char *out, size_t cap)
{
	out[0] = 0;
	add_file(out, cap, "uid_map", "/proc/self/uid_map");
	add_file(out, cap, "gid_map", "/proc/self/gid_map");
	add_file(out, cap, "setgroups", "/proc/self/setgroups");
	add_file(out, cap, "cgroup", "/proc/self/cgroup");
	uid_t r, e, s;
	gid_t gr, ge, gs;
	getresuid(&r, &e, &s);
	getresgid(&gr, &ge, &gs);
	gid_t groups[64];
	int ng = getgroups(64, groups);
	size_t used = strlen(out);
	used += snprintf(out + used, cap - used, "uids %u %u %u gids %u %u %u groups", r, e, s, gr, ge, gs);
	for (int i = 0; i < ng; i++)
		used += snprintf(out + used, cap - used, " %u", groups[i]);
	used += snprintf(out + used, cap - used, "\nsecurebits %d\n", prctl(PR_GET_SECUREBITS));
	const char *caps[] = { "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb" };
	for (unsigned i = 0; i < 5; i++) {
		char line[128] = "";
		status_line(caps[i], line, sizeof line);
		used += snprintf(out + used, cap - used, "%s %s\n", caps[i], line);
	}
	char host[256] = "";
	gethostname(host, sizeof host);
	used += snprintf(out + used, cap - used, "hostname %s\n", host);
	struct stat user;
	if (stat("/proc/self/ns/user", &user) < 0)
		die_setup("stat /proc/self/ns/user: %s", strerror(errno));
	const char *kinds[] = { "uts", "net", "ipc", "cgroup", "mnt", "pid", "pid_for_children", "time", "time_for_children" };
	for (unsigned i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		char p[64];
		snprintf(p, sizeof p, "/proc/self/ns/%s", kinds[i]);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		int owner = fd >= 0 ? ioctl(fd, NS_GET_USERNS) : -1;
		/* (EPERM: the owner is outside this user namespace) */
		const char *who = owner < 0 ? (errno == EPERM ? "outer" : "?") : ino_of_fd(owner) == user.st_ino ? "own" : "other";
		used += snprintf(out + used, cap - used, "%s owned by %s\n", kinds[i], who);
		if (owner >= 0)
			close(owner);
		if (fd >= 0)
			close(fd);
	}
}

static int64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void write_to(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die_setup("write %s to %s: %s", text, path, strerror(errno));
	close(fd);
}

#define NT 3
static volatile int thread_go;
static pid_t tids[NT];
static int thread_ok[NT];

static void *thread_main(void *arg)
{
	int i = (int)(intptr_t)arg;
	tids[i] = (pid_t)syscall(SYS_gettid);
	while (!__atomic_load_n(&thread_go, __ATOMIC_SEQ_CST))
		usleep(1000);
	thread_ok[i] = (pid_t)syscall(SYS_gettid) == tids[i];
	return NULL;
}

/* Mount a proc for its own pid namespace on W/procmnt: its /self must be this process. */
static void check_mount_proc(void)
{
	char dir[2048], self[64] = "", link[4096];
	snprintf(dir, sizeof dir, "%s/procmnt", W);
	if (mount("proc", dir, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
		fail("cannot mount proc for its pid namespace on %s after restore: %s", dir, strerror(errno));
		return;
	}
	snprintf(link, sizeof link, "%s/self", dir);
	ssize_t n = readlink(link, self, sizeof self - 1);
	if (n < 0 || atoi(self) != getpid())
		fail("its new proc's /self is %s, not %d", n < 0 ? strerror(errno) : self, getpid());
	umount2(dir, MNT_DETACH);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "view";
	if (strcmp(mode, "drop") == 0) {
		gid_t g[2] = { 2000, 2001 };
		SETUP(chmod(W, 0777)); /* (its files are written as uid 1000) */
		SETUP(setgroups(2, g));
		SETUP(setresgid(1000, 1000, 1000));
		SETUP(setresuid(1000, 1000, 1000));
	} else if (strcmp(mode, "cgroupns") == 0 && argc > 3) {
		char p[4096];
		snprintf(p, sizeof p, "%s/cgroup.procs", argv[3]);
		write_to(p, "0");
		SETUP(unshare(CLONE_NEWCGROUP));
		snprintf(p, sizeof p, "%s/sub/cgroup.procs", argv[3]);
		write_to(p, "0");
	} else if (strstr(mode, "threads") || strstr(mode, "mountproc")) {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s/procmnt", W);
		SETUP(mkdir(dir, 0755));
	} else if (strcmp(mode, "view") != 0 && strcmp(mode, "clocks") != 0) {
		die_setup("unknown mode %s", mode);
	}
	pthread_t th[NT];
	int nthreads = strstr(mode, "threads") ? NT : 0;
	for (int i = 0; i < nthreads; i++)
		if (pthread_create(&th[i], NULL, thread_main, (void *)(intptr_t)i) != 0)
			die_setup("pthread_create failed");
	for (int i = 0; i < nthreads; i++)
		while (!__atomic_load_n(&tids[i], __ATOMIC_SEQ_CST))
			usleep(1000);
	static char before[16384], after[16384];
	view(before, sizeof before);
	write_file_atomic("view", before);
	int64_t m0 = now_ns(CLOCK_MONOTONIC), b0 = now_ns(CLOCK_BOOTTIME), r0 = now_ns(CLOCK_REALTIME);
	signal_ready();
	wait_go();
	int64_t m1 = now_ns(CLOCK_MONOTONIC), b1 = now_ns(CLOCK_BOOTTIME), r1 = now_ns(CLOCK_REALTIME);
	if (strcmp(mode, "clocks") == 0) {
		int64_t dm = m1 - m0, db = b1 - b0, dr = r1 - r0;
		CHECK(dm >= 0 && db >= 0 && llabs(dm - dr) <= 1000000000LL && llabs(db - dr) <= 1000000000LL,
		      "from ready to go CLOCK_MONOTONIC moved %+.3f s, CLOCK_BOOTTIME %+.3f s, CLOCK_REALTIME %+.3f s",
		      dm / 1e9, db / 1e9, dr / 1e9);
	}
	view(after, sizeof after);
	if (strcmp(before, after) != 0) {
		fprintf(stderr, "before:\n%s\nafter:\n%s\n", before, after);
		fail("the view from inside changed (see out.log)");
	}
	__atomic_store_n(&thread_go, 1, __ATOMIC_SEQ_CST);
	for (int i = 0; i < nthreads; i++) {
		pthread_join(th[i], NULL);
		if (!thread_ok[i])
			fail("thread %d (tid %d before the dump) has another id after restore", i, tids[i]);
	}
	if (strstr(mode, "mountproc"))
		check_mount_proc();
	finish();
}
