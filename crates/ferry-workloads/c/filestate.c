/*
 * filestate MODE: one kind of file state that must come back exactly after a restore (issue 11,
 * "Files"). Each mode records what the kernel reports before ready and compares after go.
 *
 *   pipe_reopen  a pipe whose ends are opened a second time through /proc/self/fd/N: four open
 *                file descriptions of one pipe, each with its own O_NONBLOCK; the pipe is full
 *                (written through the second write description until EAGAIN). After restore:
 *                each description has its own flags and stays a description of its own, and
 *                the pipe holds the very bytes it held, once.
 *   fown         F_SETOWN / F_SETOWN_EX / F_SETSIG / O_ASYNC on pipe read ends: the owner
 *                (pid, tid, process group), the signal, O_ASYNC, and a write into each pipe
 *                delivers the signal to the owner (with si_fd for F_SETSIG).
 *   times        atime and mtime of a plain open file, a deleted file, a memfd and a FIFO with
 *                bytes in flight, all set to old values first: unchanged after restore.
 *   owner        mode bits, uid and gid of a memfd (fchmod 0640, fchown), of a memfd only
 *                mapped (its fd closed; looked at through /proc/self/map_files) and of a deleted
 *                file (mode 0666, which ferry's umask would cut, and a setgid bit; fchown).
 *   sparse       a deleted 64 MiB file with two 4 KiB data blocks and holes around them: the
 *                same size, the same data/hole layout (SEEK_DATA/SEEK_HOLE), the same blocks
 *                allocated, the same bytes.
 *   devnode      a character device node (1:3, like /dev/null) made with mknod in W, mode
 *                0600, owned by 99:99, opened and unlinked: after restore still a deleted node
 *                at its own path with the same mode, rdev and owner.
 *   memfd_exec   a memfd holding an executable (a copy of /bin/true), reopened read-only and
 *                the writable fd closed: execveat(fd, "", AT_EMPTY_PATH) in a child works
 *                before the checkpoint and must work after the restore (no ETXTBSY); the same
 *                for a deleted regular copy of it held read-only.
 */
#include "common.h"
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

static void fd_at(int fd, int at)
{
	if (fd < 0)
		die_setup("open: %s", strerror(errno));
	if (fd != at) {
		SETUP(dup2(fd, at));
		close(fd);
	}
}

static int reopen(int fd, int flags)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	return open(path, flags);
}

static int same_description(int a, int b)
{
	return syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b) == 0;
}

/* ---- pipe_reopen ---- */

static void pipe_reopen(void)
{
	int p[2];
	SETUP(pipe(p));
	fd_at(p[0], 10);
	fd_at(p[1], 11);
	fd_at(reopen(10, O_RDONLY | O_NONBLOCK), 12); /* second read description, non-blocking */
	fd_at(reopen(11, O_WRONLY | O_NONBLOCK), 13); /* second write description, non-blocking */
	static char pattern[1 << 20];
	fill_prng(pattern, sizeof pattern, 0x9198);
	size_t total = 0;
	for (;;) { /* odd-sized writes: the pipe's pages are not all full */
		ssize_t n = write(13, pattern + total, 1000);
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0)
			die_setup("fill the pipe: %s", strerror(errno));
		total += (size_t)n;
	}
	static const int fds[] = { 10, 11, 12, 13 };
	int flags[4];
	for (int i = 0; i < 4; i++)
		flags[i] = fcntl(fds[i], F_GETFL);
	fprintf(stderr, "pipe_reopen: %zu bytes in the pipe\n", total);
	signal_ready();
	wait_go();

	for (int i = 0; i < 4; i++) {
		int now = fcntl(fds[i], F_GETFL);
		CHECK(now == flags[i], "fd %d: F_GETFL %#o, was %#o", fds[i], now, flags[i]);
	}
	CHECK(!same_description(10, 12), "fds 10 and 12 became one open file description");
	CHECK(!same_description(11, 13), "fds 11 and 13 became one open file description");
	/* O_NONBLOCK set or cleared on one description must not change the other */
	SETUP(fcntl(10, F_SETFL, O_NONBLOCK));
	SETUP(fcntl(12, F_SETFL, 0));
	CHECK(fcntl(10, F_GETFL) & O_NONBLOCK, "O_NONBLOCK cleared on fd 12 is gone from fd 10 too");
	SETUP(fcntl(10, F_SETFL, 0));
	SETUP(fcntl(12, F_SETFL, O_NONBLOCK));
	static char got[1 << 20];
	size_t have = 0;
	for (;;) {
		ssize_t n = read(12, got + have, sizeof got - have);
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			fail("read the pipe: %s", n < 0 ? strerror(errno) : "EOF");
			break;
		}
		have += (size_t)n;
	}
	CHECK(have == total, "the pipe holds %zu bytes, held %zu", have, total);
	CHECK(memcmp(got, pattern, have < total ? have : total) == 0, "the pipe's bytes differ");
	/* still one pipe: a write through 11 is read through 10 */
	CHECK(write(11, "x", 1) == 1, "write fd 11: %s", strerror(errno));
	char c = 0;
	CHECK(read(10, &c, 1) == 1 && c == 'x', "fd 10 does not read what fd 11 wrote");
	finish();
}

/* ---- fown ---- */

static volatile sig_atomic_t got_sigio, got_rt, rt_fd = -1, rt_code;

static void on_sigio(int sig)
{
	(void)sig;
	got_sigio++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	got_rt++;
	rt_fd = si->si_fd;
	rt_code = si->si_code;
}

struct owner {
	int fd;
	struct f_owner_ex ex;
	int sig;
	int fl;
};

static void owner_of(int fd, struct owner *o)
{
	memset(o, 0, sizeof *o);
	o->fd = fd;
	if (fcntl(fd, F_GETOWN_EX, &o->ex) < 0)
		o->ex.type = -1;
	o->sig = fcntl(fd, F_GETSIG);
	o->fl = fcntl(fd, F_GETFL);
}

static void fown(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigio;
	SETUP(sigaction(SIGIO, &sa, NULL));
	sa.sa_handler = NULL;
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO;
	SETUP(sigaction(SIGRTMIN + 3, &sa, NULL));
	int a[2], b[2], c[2];
	SETUP(pipe(a));
	SETUP(pipe(b));
	SETUP(pipe(c));
	fd_at(a[0], 10);
	fd_at(a[1], 11);
	fd_at(b[0], 12);
	fd_at(b[1], 13);
	fd_at(c[0], 14);
	fd_at(c[1], 15);
	/* 10: plain F_SETOWN to the process, SIGIO, O_ASYNC */
	SETUP(fcntl(10, F_SETOWN, getpid()));
	SETUP(fcntl(10, F_SETFL, O_ASYNC | O_NONBLOCK));
	/* 12: F_SETOWN_EX to the thread, F_SETSIG SIGRTMIN+3, O_ASYNC */
	struct f_owner_ex ex = { F_OWNER_TID, (pid_t)syscall(SYS_gettid) };
	SETUP(fcntl(12, F_SETOWN_EX, &ex));
	SETUP(fcntl(12, F_SETSIG, SIGRTMIN + 3));
	SETUP(fcntl(12, F_SETFL, O_ASYNC));
	/* 14: owned by the process group, no O_ASYNC (the owner alone must survive too) */
	SETUP(fcntl(14, F_SETOWN, -getpgrp()));
	static const int fds[] = { 10, 12, 14, 11 };
	struct owner before[4];
	for (int i = 0; i < 4; i++)
		owner_of(fds[i], &before[i]);
	signal_ready();
	wait_go();

	for (int i = 0; i < 4; i++) {
		struct owner now;
		owner_of(fds[i], &now);
		CHECK(now.ex.type == before[i].ex.type && now.ex.pid == before[i].ex.pid,
		      "fd %d: owner type %d pid %d, was type %d pid %d", fds[i], now.ex.type, now.ex.pid,
		      before[i].ex.type, before[i].ex.pid);
		CHECK(now.sig == before[i].sig, "fd %d: F_GETSIG %d, was %d", fds[i], now.sig, before[i].sig);
		CHECK(now.fl == before[i].fl, "fd %d: F_GETFL %#o, was %#o", fds[i], now.fl, before[i].fl);
	}
	sigset_t none;
	sigemptyset(&none);
	SETUP(sigprocmask(SIG_SETMASK, &none, NULL));
	CHECK(write(11, "a", 1) == 1, "write fd 11: %s", strerror(errno));
	CHECK(write(13, "b", 1) == 1, "write fd 13: %s", strerror(errno));
	for (int i = 0; i < 100 && !(got_sigio && got_rt); i++)
		usleep(10000);
	CHECK(got_sigio == 1, "SIGIO for fd 10 delivered %d times, not once", (int)got_sigio);
	CHECK(got_rt == 1 && rt_fd == 12 && rt_code == POLL_IN,
	      "F_SETSIG signal for fd 12: %d times, si_fd %d si_code %d", (int)got_rt, (int)rt_fd, (int)rt_code);
	finish();
}

/* ---- times ---- */

struct times {
	const char *what;
	int fd;
	struct timespec a, m;
};

static void times_of(struct times *t)
{
	struct stat st;
	if (fstat(t->fd, &st) < 0) {
		t->a.tv_sec = t->m.tv_sec = -1;
		return;
	}
	t->a = st.st_atim;
	t->m = st.st_mtim;
}

static void set_old_times(int fd, long salt)
{
	struct timespec ts[2] = { { 1000000000 + salt, 123456789 }, { 900000000 + salt, 987654321 } };
	SETUP(futimens(fd, ts));
}

static void times(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/plain.txt", W);
	fd_at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0644), 10);
	SETUP(write(10, "plain file\n", 11));
	set_old_times(10, 1);
	snprintf(path, sizeof path, "%s/gone.txt", W);
	fd_at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0644), 11);
	SETUP(write(11, "a deleted file\n", 15));
	set_old_times(11, 2);
	SETUP(unlink(path));
	fd_at(memfd_create("times", 0), 12);
	SETUP(write(12, "a memfd\n", 8));
	set_old_times(12, 3);
	snprintf(path, sizeof path, "%s/fifo", W);
	SETUP(mkfifo(path, 0644));
	fd_at(open(path, O_RDWR | O_NONBLOCK), 13);
	SETUP(write(13, "bytes in flight", 15));
	set_old_times(13, 4);
	struct times before[] = { { .what = "plain file", .fd = 10 }, { .what = "deleted file", .fd = 11 }, { .what = "memfd", .fd = 12 }, { .what = "FIFO", .fd = 13 } };
	const int n = sizeof before / sizeof before[0];
	for (int i = 0; i < n; i++)
		times_of(&before[i]);
	signal_ready();
	wait_go();

	for (int i = 0; i < n; i++) {
		struct times now = before[i];
		times_of(&now);
		CHECK(now.m.tv_sec == before[i].m.tv_sec && now.m.tv_nsec == before[i].m.tv_nsec,
		      "%s: mtime %lld.%09ld, was %lld.%09ld", now.what, (long long)now.m.tv_sec, now.m.tv_nsec,
		      (long long)before[i].m.tv_sec, before[i].m.tv_nsec);
		CHECK(now.a.tv_sec == before[i].a.tv_sec && now.a.tv_nsec == before[i].a.tv_nsec,
		      "%s: atime %lld.%09ld, was %lld.%09ld", now.what, (long long)now.a.tv_sec, now.a.tv_nsec,
		      (long long)before[i].a.tv_sec, before[i].a.tv_nsec);
	}
	char buf[32] = "";
	CHECK(pread(11, buf, 15, 0) == 15 && memcmp(buf, "a deleted file\n", 15) == 0, "the deleted file's content");
	CHECK(read(13, buf, sizeof buf) == 15 && memcmp(buf, "bytes in flight", 15) == 0, "the FIFO's bytes");
	finish();
}

/* ---- owner ---- */

struct attrs {
	const char *what;
	int fd;
	struct stat st;
};

static void owner(void)
{
	fd_at(memfd_create("owned", 0), 10);
	SETUP(write(10, "memfd\n", 6));
	SETUP(fchown(10, 1234, 5678));
	SETUP(fchmod(10, 0640));
	char path[4096];
	snprintf(path, sizeof path, "%s/gone.txt", W);
	fd_at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0600), 11);
	SETUP(write(11, "deleted\n", 8));
	SETUP(fchown(11, 4321, 8765));
	SETUP(fchmod(11, 02666));
	SETUP(unlink(path));
	/* a memfd only mapped (its fd closed): its pages travel in the page file */
	int m = memfd_create("mapped-only", 0);
	if (m < 0)
		die_setup("memfd_create: %s", strerror(errno));
	SETUP(ftruncate(m, 4096));
	SETUP(fchown(m, 2222, 3333));
	SETUP(fchmod(m, 0604));
	char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	if (map == MAP_FAILED)
		die_setup("mmap the memfd: %s", strerror(errno));
	strcpy(map, "mapped only");
	close(m);
	snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)map, (unsigned long)map + 4096);
	fd_at(open(path, O_RDONLY), 12);
	struct attrs before[] = { { .what = "memfd", .fd = 10 }, { .what = "deleted file", .fd = 11 },
				  { .what = "mapped-only memfd", .fd = 12 } };
	const int n = sizeof before / sizeof before[0];
	for (int i = 0; i < n; i++)
		SETUP(fstat(before[i].fd, &before[i].st));
	close(12); /* only looked at through the mapping, before and after */
	signal_ready();
	wait_go();

	fd_at(open(path, O_RDONLY), 12);
	CHECK(strcmp(map, "mapped only") == 0, "the mapped-only memfd lost its content");

	for (int i = 0; i < n; i++) {
		struct stat st;
		if (fstat(before[i].fd, &st) < 0) {
			fail("%s: fstat: %s", before[i].what, strerror(errno));
			continue;
		}
		CHECK(st.st_mode == before[i].st.st_mode, "%s: mode %#o, was %#o", before[i].what, st.st_mode,
		      before[i].st.st_mode);
		CHECK(st.st_uid == before[i].st.st_uid && st.st_gid == before[i].st.st_gid, "%s: owner %u:%u, was %u:%u",
		      before[i].what, st.st_uid, st.st_gid, before[i].st.st_uid, before[i].st.st_gid);
		CHECK(st.st_size == before[i].st.st_size, "%s: size %lld, was %lld", before[i].what,
		      (long long)st.st_size, (long long)before[i].st.st_size);
	}
	finish();
}

/* ---- sparse ---- */

#define SPARSE_SIZE (64L << 20)

/* the data extents of fd, as "start-end start-end ..." */
static void layout(int fd, char *out, size_t cap)
{
	out[0] = 0;
	off_t pos = 0, was = lseek(fd, 0, SEEK_CUR);
	for (;;) {
		off_t d = lseek(fd, pos, SEEK_DATA);
		if (d < 0)
			break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		if (h < 0)
			break;
		snprintf(out + strlen(out), cap - strlen(out), " %lld-%lld", (long long)d, (long long)h);
		pos = h;
	}
	lseek(fd, was, SEEK_SET);
}

static void sparse(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/sparse", W);
	fd_at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0644), 10);
	SETUP(ftruncate(10, SPARSE_SIZE));
	static char block[2][4096];
	fill_prng(block[0], sizeof block[0], 0x5a1);
	fill_prng(block[1], sizeof block[1], 0x5a2);
	SETUP(pwrite(10, block[0], 4096, 1 << 20));
	SETUP(pwrite(10, block[1], 4096, 32 << 20));
	SETUP(fsync(10));
	SETUP(unlink(path));
	SETUP(lseek(10, 12345, SEEK_SET));
	struct stat st0;
	SETUP(fstat(10, &st0));
	char map0[512];
	layout(10, map0, sizeof map0);
	fprintf(stderr, "sparse: size %lld, %lld blocks, data at%s\n", (long long)st0.st_size, (long long)st0.st_blocks,
		map0);
	signal_ready();
	wait_go();

	struct stat st;
	SETUP(fstat(10, &st));
	char map[512];
	layout(10, map, sizeof map);
	CHECK(st.st_size == st0.st_size, "size %lld, was %lld", (long long)st.st_size, (long long)st0.st_size);
	CHECK(st.st_blocks == st0.st_blocks, "%lld blocks allocated, was %lld (holes filled?)", (long long)st.st_blocks,
	      (long long)st0.st_blocks);
	CHECK(strcmp(map, map0) == 0, "data at%s, was at%s", map, map0);
	CHECK(lseek(10, 0, SEEK_CUR) == 12345, "offset moved");
	static char got[4096];
	CHECK(pread(10, got, 4096, 1 << 20) == 4096 && memcmp(got, block[0], 4096) == 0, "first block differs");
	CHECK(pread(10, got, 4096, 32 << 20) == 4096 && memcmp(got, block[1], 4096) == 0, "second block differs");
	CHECK(pread(10, got, 4096, 5 << 20) == 4096 && got[0] == 0 && memcmp(got, got + 1, 4095) == 0,
	      "a hole does not read zeros");
	finish();
}

/* ---- devnode ---- */

static void devnode(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/mynull", W);
	SETUP(mknod(path, S_IFCHR | 0600, makedev(1, 3)));
	SETUP(chown(path, 99, 99));
	fd_at(open(path, O_RDWR), 10);
	SETUP(unlink(path));
	struct stat st0;
	SETUP(fstat(10, &st0));
	char link0[4096] = "", link[4096] = "";
	int fl0 = fcntl(10, F_GETFL);
	SETUP(readlink("/proc/self/fd/10", link0, sizeof link0 - 1));
	signal_ready();
	wait_go();

	struct stat st;
	SETUP(fstat(10, &st));
	CHECK(st.st_mode == st0.st_mode, "mode %#o, was %#o", st.st_mode, st0.st_mode);
	CHECK(st.st_rdev == st0.st_rdev, "rdev %u:%u, was %u:%u", major(st.st_rdev), minor(st.st_rdev),
	      major(st0.st_rdev), minor(st0.st_rdev));
	CHECK(st.st_uid == st0.st_uid && st.st_gid == st0.st_gid, "owner %u:%u, was %u:%u", st.st_uid, st.st_gid,
	      st0.st_uid, st0.st_gid);
	CHECK(st.st_nlink == 0, "%lu links, was 0", (unsigned long)st.st_nlink);
	if (readlink("/proc/self/fd/10", link, sizeof link - 1) < 0)
		fail("readlink fd 10: %s", strerror(errno));
	CHECK(strcmp(link, link0) == 0, "fd 10 is %s, was %s", link, link0);
	CHECK(write(10, "x", 1) == 1, "write to the node: %s", strerror(errno));
	CHECK(fcntl(10, F_GETFL) == fl0, "F_GETFL %#o, was %#o", fcntl(10, F_GETFL), fl0);
	finish();
}

/* ---- memfd_exec ---- */

static int exec_child(int fd, const char *when)
{
	pid_t pid = fork();
	if (pid < 0) {
		fail("%s: fork: %s", when, strerror(errno));
		return -1;
	}
	if (pid == 0) {
		char *argv[] = { "true", NULL }, *envp[] = { NULL };
		syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
		_exit(100 + errno);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid) {
		fail("%s: waitpid: %s", when, strerror(errno));
		return -1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		int e = WIFEXITED(status) ? WEXITSTATUS(status) - 100 : -1;
		fail("%s: execveat of the memfd failed: %s", when, e > 0 ? strerror(e) : "killed");
		return -1;
	}
	return 0;
}

static void memfd_exec(void)
{
	int rw = memfd_create("true-copy", MFD_CLOEXEC);
	if (rw < 0)
		die_setup("memfd_create: %s", strerror(errno));
	int src = open("/bin/true", O_RDONLY);
	if (src < 0)
		die_setup("open /bin/true: %s", strerror(errno));
	static char buf[1 << 16];
	ssize_t n;
	while ((n = read(src, buf, sizeof buf)) > 0)
		if (write(rw, buf, (size_t)n) != n)
			die_setup("write memfd: %s", strerror(errno));
	close(src);
	SETUP(fchmod(rw, 0755));
	fd_at(reopen(rw, O_RDONLY), 10);
	close(rw);
	/* mapped shared (read-only: the description is) and private executable, as a loader would */
	void *shared = mmap(NULL, 4096, PROT_READ, MAP_SHARED, 10, 0);
	void *text = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, 10, 0);
	if (shared == MAP_FAILED || text == MAP_FAILED)
		die_setup("mmap the memfd: %s", strerror(errno));
	/* and a deleted regular copy of it, held read-only */
	char path[4096];
	snprintf(path, sizeof path, "%s/true-copy", W);
	int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
	if (w < 0)
		die_setup("create %s: %s", path, strerror(errno));
	SETUP(lseek(10, 0, SEEK_SET));
	while ((n = read(10, buf, sizeof buf)) > 0)
		if (write(w, buf, (size_t)n) != n)
			die_setup("write %s: %s", path, strerror(errno));
	close(w);
	fd_at(open(path, O_RDONLY), 11);
	SETUP(unlink(path));
	if (exec_child(10, "before the checkpoint") < 0 || exec_child(11, "before the checkpoint (deleted file)") < 0)
		die_setup("execveat does not work before the checkpoint");
	struct stat st0;
	SETUP(fstat(10, &st0));
	signal_ready();
	wait_go();

	struct stat st;
	SETUP(fstat(10, &st));
	CHECK(st.st_size == st0.st_size && st.st_mode == st0.st_mode, "memfd: size %lld mode %#o, was %lld %#o",
	      (long long)st.st_size, st.st_mode, (long long)st0.st_size, st0.st_mode);
	CHECK(memcmp(shared, "\177ELF", 4) == 0 && memcmp(text, "\177ELF", 4) == 0, "the mappings lost the ELF header");
	exec_child(10, "after the restore");
	exec_child(11, "after the restore (deleted file)");
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	if (!strcmp(mode, "pipe_reopen"))
		pipe_reopen();
	else if (!strcmp(mode, "fown"))
		fown();
	else if (!strcmp(mode, "times"))
		times();
	else if (!strcmp(mode, "owner"))
		owner();
	else if (!strcmp(mode, "sparse"))
		sparse();
	else if (!strcmp(mode, "devnode"))
		devnode();
	else if (!strcmp(mode, "memfd_exec"))
		memfd_exec();
	die_setup("unknown mode %s", mode);
}
