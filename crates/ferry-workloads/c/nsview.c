/*
 * nsview: a process in namespaces of its own, checking its view of them after restore.
 *
 *   nsview W uts   unshare(CLONE_NEWUTS), set a host and domain name; on go: the same names.
 *   nsview W pidmnt  the same in pid 1 of a new pid namespace (its /proc must be its own).
 *   nsview W mnt   unshare(CLONE_NEWNS | CLONE_NEWUTS), build a container-like mount tree with
 *                  W (bound onto itself) as its root: proc, a tmpfs /tmp with files of every
 *                  kind, a tmpfs /dev with a null node, devpts (newinstance) and mqueue, a
 *                  read-only bind of a tmpfs sub-directory on /data, /dev/null bound over
 *                  /proc/timer_list (runc's masks), sysfs read-only, a shared /tmp; pivot_root into
 *                  W and exec the copy of itself the test put at W/nsview (with its libraries
 *                  under W) as "nsview / mnt2", which records /proc/self/mountinfo (ids and
 *                  peer group numbers left out) and holds a pty pair of its devpts (/dev/ptmx);
 *                  on go it checks the mountinfo, the tmpfs files, the mounts' behaviour
 *                  (read-only, /dev/null, /proc/timer_list masked) and the pair (same index,
 *                  on the root's devpts, bytes both ways).
 *   nsview W runmnt  started by `ferry run --mntns` (W outside /tmp, which is the job's own): a
 *                  file in its private /tmp, a tmpfs of its own on /tmp/own with a file; on
 *                  go: both files, /tmp/own still a tmpfs of its own (not /tmp's).
 *   nsview W mnt-ramfs  unshare(CLONE_NEWNS) (a copy of the host's mounts), then a ramfs of
 *                  its own on W/ramfs: a file system ferry does not recreate.
 *   nsview W bigtmpfs  unshare(CLONE_NEWNS), then a tmpfs of its own on W/big with 300 MiB of
 *                  files (three of 100 MiB of pseudo-random data, one with its own owner,
 *                  mode and mtime) and a sparse 1 GiB file with a MiB of data at each end; it
 *                  holds the first file open at an offset. On go: every byte, the holes
 *                  (SEEK_DATA/SEEK_HOLE, blocks), the attributes, the fd's offset.
 */
#include "common.h"
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <termios.h>

static const char HOST[] = "ferry-ns-host";
static const char DOMAIN[] = "ferry.example";

static void check_uts(void)
{
	struct utsname u;
	CHECK(uname(&u) == 0, "uname: %s", strerror(errno));
	CHECK(strcmp(u.nodename, HOST) == 0, "host name %s, expected %s", u.nodename, HOST);
	CHECK(strcmp(u.domainname, DOMAIN) == 0, "domain name %s, expected %s", u.domainname, DOMAIN);
}

static void set_uts(void)
{
	SETUP(sethostname(HOST, strlen(HOST)));
	SETUP(setdomainname(DOMAIN, strlen(DOMAIN)));
}

static char path_buf[8][4096];
static const char *at(int slot, const char *rel)
{
	snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", W, rel);
	return path_buf[slot];
}

static void write_text(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		die_setup("create %s: %s", path, strerror(errno));
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die_setup("write %s", path);
	close(fd);
	SETUP(chmod(path, mode));
}

static void set_mtime(const char *path, time_t sec)
{
	struct timespec t[2] = { { sec, 0 }, { sec, 0 } };
	SETUP(utimensat(AT_FDCWD, path, t, AT_SYMLINK_NOFOLLOW));
}

static void build_tree(void)
{
	SETUP(unshare(CLONE_NEWNS | CLONE_NEWUTS));
	set_uts();
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	SETUP(mount(W, W, NULL, MS_BIND, NULL));
	const char *dirs[] = { "proc", "tmp", "dev", "data", "sys" };
	for (unsigned i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
		if (mkdir(at(0, dirs[i]), 0755) < 0 && errno != EEXIST)
			die_setup("mkdir %s: %s", at(0, dirs[i]), strerror(errno));
	SETUP(mount("proc", at(0, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	SETUP(mount("tmpfs", at(0, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=16m"));
	write_text(at(0, "tmp/hello"), "hello from a tmpfs\n", 0640);
	SETUP(chown(at(0, "tmp/hello"), 1234, 5678));
	set_mtime(at(0, "tmp/hello"), 1000000000);
	SETUP(mkdir(at(0, "tmp/sub"), 0750));
	write_text(at(0, "tmp/sub/inner"), "inner file\n", 0600);
	SETUP(symlink("hello", at(0, "tmp/link")));
	SETUP(mkfifo(at(0, "tmp/fifo"), 0604));
	write_text(at(0, "tmp/empty"), "", 0444);
	set_mtime(at(0, "tmp/sub"), 1100000000);
	SETUP(mount("tmpfs", at(0, "dev"), "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=64k"));
	SETUP(mknod(at(0, "dev/null"), S_IFCHR | 0666, makedev(1, 3)));
	SETUP(chmod(at(0, "dev/null"), 0666));
	SETUP(mkdir(at(0, "dev/pts"), 0755));
	SETUP(mkdir(at(0, "dev/mqueue"), 0755));
	SETUP(symlink("pts/ptmx", at(0, "dev/ptmx")));
	SETUP(mount("devpts", at(0, "dev/pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"));
	SETUP(mount("mqueue", at(0, "dev/mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	SETUP(mount(at(0, "tmp/sub"), at(1, "data"), NULL, MS_BIND, NULL));
	SETUP(mount(NULL, at(0, "data"), NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL));
	SETUP(mount(at(0, "dev/null"), at(1, "proc/timer_list"), NULL, MS_BIND, NULL));
	SETUP(mount("sysfs", at(0, "sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	SETUP(mount(NULL, at(0, "tmp"), NULL, MS_SHARED, NULL));
	SETUP(chdir(W));
	SETUP(syscall(SYS_pivot_root, ".", "."));
	SETUP(umount2(".", MNT_DETACH));
	SETUP(chdir("/"));
}

static int cmp_lines(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * /proc/self/mountinfo without mount ids, device numbers and peer group numbers, its lines
 * sorted (the order of mount ids is not kept: with a new pid namespace, the proc mounts are
 * made last, by its init).
 */
static void mountinfo(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f) {
		snprintf(out, len, "(cannot open mountinfo: %s)", strerror(errno));
		return;
	}
	static char lines[128][1024];
	char *sorted[128];
	int n = 0;
	char line[4096];
	while (n < 128 && fgets(line, sizeof line, f)) {
		char *save = NULL, *tok;
		size_t used = 0;
		int i = 0;
		lines[n][0] = 0;
		for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), i++) {
			if (i < 3)
				continue; /* id, parent, major:minor */
			char word[1024];
			snprintf(word, sizeof word, "%s", tok);
			char *colon = strchr(word, ':');
			if (i > 5 && colon && (strncmp(word, "shared:", 7) == 0 || strncmp(word, "master:", 7) == 0))
				colon[1] = 0;
			used += snprintf(lines[n] + used, used < sizeof lines[n] ? sizeof lines[n] - used : 0, "%s ", word);
		}
		sorted[n] = lines[n];
		n++;
	}
	fclose(f);
	qsort(sorted, n, sizeof sorted[0], cmp_lines);
	size_t used = 0;
	out[0] = 0;
	for (int i = 0; i < n; i++)
		used += snprintf(out + used, used < len ? len - used : 0, "%s\n", sorted[i]);
}

static void expect_file(const char *path, const char *text, mode_t mode, uid_t uid, gid_t gid)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		fail("%s: %s", path, strerror(errno));
		return;
	}
	CHECK((st.st_mode & 07777) == mode, "%s: mode %o, expected %o", path, st.st_mode & 07777, mode);
	CHECK(st.st_uid == uid && st.st_gid == gid, "%s: owner %d:%d", path, st.st_uid, st.st_gid);
	char buf[256] = { 0 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof buf - 1);
		CHECK(n >= 0 && strcmp(buf, text) == 0, "%s holds %s", path, buf);
		close(fd);
	}
}

static void check_mnt(const char *before)
{
	static char after[65536];
	mountinfo(after, sizeof after);
	if (strcmp(before, after) != 0) {
		fprintf(stderr, "mountinfo before:\n%s\nafter:\n%s\n", before, after);
		fail("the mount tree changed (see out.log)");
	}
	check_uts();
	expect_file("/tmp/hello", "hello from a tmpfs\n", 0640, 1234, 5678);
	expect_file("/tmp/sub/inner", "inner file\n", 0600, 0, 0);
	expect_file("/data/inner", "inner file\n", 0600, 0, 0);
	expect_file("/tmp/empty", "", 0444, 0, 0);
	struct stat st;
	CHECK(lstat("/tmp/hello", &st) == 0 && st.st_mtime == 1000000000, "/tmp/hello mtime %ld", (long)st.st_mtime);
	CHECK(lstat("/tmp/sub", &st) == 0 && st.st_mtime == 1100000000 && (st.st_mode & 07777) == 0750,
	      "/tmp/sub mtime %ld mode %o", (long)st.st_mtime, st.st_mode & 07777);
	CHECK(lstat("/tmp", &st) == 0 && (st.st_mode & 07777) == 01777, "/tmp mode %o", st.st_mode & 07777);
	char target[64] = { 0 };
	CHECK(readlink("/tmp/link", target, sizeof target - 1) == 5 && strcmp(target, "hello") == 0, "/tmp/link -> %s", target);
	CHECK(lstat("/tmp/fifo", &st) == 0 && S_ISFIFO(st.st_mode) && (st.st_mode & 07777) == 0604, "/tmp/fifo is not the fifo");
	CHECK(lstat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "/dev/null is not 1:3");
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0 && write(fd, "x", 1) == 1, "/dev/null is not writable: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
	fd = open("/data/new", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	CHECK(fd < 0 && errno == EROFS, "/data is writable (fd %d, %s)", fd, strerror(errno));
	fd = open("/proc/timer_list", O_RDONLY | O_CLOEXEC);
	char b[8];
	CHECK(fd >= 0 && read(fd, b, sizeof b) == 0, "/proc/timer_list is not masked by /dev/null");
	if (fd >= 0)
		close(fd);
	fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	CHECK(fd >= 0, "/dev/ptmx: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
	char self[64] = { 0 };
	CHECK(readlink("/proc/self", self, sizeof self - 1) > 0 && atoi(self) == getpid(), "/proc/self is %s, pid %d", self,
	      (int)getpid());
}

/* The pair opened before ready: still a pair of this root's devpts, at the same index. */
static void check_pty(int m, int sl, const char *pts)
{
	char now[64] = "";
	CHECK(ptsname_r(m, now, sizeof now) == 0 && strcmp(now, pts) == 0, "the master's slave is %s, not %s", now, pts);
	struct stat a, b;
	CHECK(fstat(sl, &a) == 0 && stat(pts, &b) == 0 && a.st_rdev == b.st_rdev, "the slave fd is not %s", pts);
	struct statfs fs;
	CHECK(fstatfs(sl, &fs) == 0 && fs.f_type == DEVPTS_SUPER_MAGIC, "the slave is not on a devpts");
	struct termios t;
	if (tcgetattr(sl, &t) == 0) {
		cfmakeraw(&t);
		tcsetattr(sl, TCSANOW, &t);
	}
	char buf[8] = "";
	CHECK(write(m, "m2s", 3) == 3 && read(sl, buf, sizeof buf) == 3 && memcmp(buf, "m2s", 3) == 0,
	      "master to slave: %.8s", buf);
	CHECK(write(sl, "s2m", 3) == 3 && read(m, buf, sizeof buf) == 3 && memcmp(buf, "s2m", 3) == 0,
	      "slave to master: %.8s", buf);
}

/* Write text to path (created or truncated); 0 or -1. */
static int put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

#define BIG_MIB 100
#define BIG_FILES 3
#define SPARSE_LEN (1LL << 30)
#define HELD_AT 12345678LL
static const struct timespec BIG_MTIME = { 1000000000, 123456789 };

/* The seed of MiB `chunk` of big file `file` (odd, as fill_prng wants). */
static uint64_t big_seed(int file, long long chunk)
{
	return (uint64_t)(file * 100000 + chunk) * 2 + 1;
}

static void big_write(int fd, int file, long long chunk, char *buf)
{
	fill_prng(buf, 1 << 20, big_seed(file, chunk));
	if (pwrite(fd, buf, 1 << 20, chunk << 20) != 1 << 20)
		die_setup("write big file %d: %s", file, strerror(errno));
}

/* Whether MiB `chunk` of `fd` is what big_write(file, chunk) wrote (fails otherwise). */
static int big_check(int fd, int file, long long chunk, char *buf, const char *name)
{
	ssize_t n = pread(fd, buf, 1 << 20, chunk << 20), bad;
	if (n != 1 << 20) {
		fail("%s: MiB %lld: read %zd bytes", name, chunk, n);
		return 0;
	}
	if ((bad = check_prng(buf, 1 << 20, big_seed(file, chunk))) >= 0) {
		fail("%s: byte %lld differs", name, (chunk << 20) + (long long)bad);
		return 0;
	}
	return 1;
}

static void bigtmpfs(void)
{
	static char buf[1 << 20];
	char name[BIG_FILES + 1][4096];
	SETUP(unshare(CLONE_NEWNS));
	SETUP(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL));
	SETUP(mkdir(at(0, "big"), 0755));
	SETUP(mount("tmpfs", at(0, "big"), "tmpfs", MS_NOSUID, "size=2g,mode=0755"));
	for (int i = 0; i <= BIG_FILES; i++)
		snprintf(name[i], sizeof name[i], "%s/big/%s%d", W, i == BIG_FILES ? "sparse" : "f", i);
	for (int i = 0; i < BIG_FILES; i++) {
		int fd = open(name[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0)
			die_setup("create %s: %s", name[i], strerror(errno));
		for (long long c = 0; c < BIG_MIB; c++)
			big_write(fd, i, c, buf);
		close(fd);
	}
	int sp = open(name[BIG_FILES], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (sp < 0)
		die_setup("create %s: %s", name[BIG_FILES], strerror(errno));
	SETUP(ftruncate(sp, SPARSE_LEN));
	big_write(sp, BIG_FILES, 0, buf);
	big_write(sp, BIG_FILES, (SPARSE_LEN >> 20) - 1, buf);
	close(sp);
	SETUP(chown(name[1], 1234, 5678));
	SETUP(chmod(name[1], 0640));
	struct timespec times[2] = { BIG_MTIME, BIG_MTIME };
	SETUP(utimensat(AT_FDCWD, name[1], times, 0));
	int held = open(name[0], O_RDONLY | O_CLOEXEC);
	if (held < 0 || lseek(held, HELD_AT, SEEK_SET) != HELD_AT)
		die_setup("open %s at %lld: %s", name[0], HELD_AT, strerror(errno));
	signal_ready();
	wait_go();
	CHECK(lseek(held, 0, SEEK_CUR) == HELD_AT, "the held fd of f0 is at %lld, not %lld",
	      (long long)lseek(held, 0, SEEK_CUR), HELD_AT);
	for (int i = 0; i < BIG_FILES; i++) {
		int fd = open(name[i], O_RDONLY | O_CLOEXEC);
		struct stat st;
		CHECK(fd >= 0 && fstat(fd, &st) == 0, "%s: %s", name[i], strerror(errno));
		if (fd < 0)
			continue;
		CHECK(st.st_size == (off_t)BIG_MIB << 20, "%s: size %lld", name[i], (long long)st.st_size);
		for (long long c = 0; c < BIG_MIB && big_check(fd, i, c, buf, name[i]); c++)
			;
		close(fd);
	}
	/* the held fd reads the same file, from its offset */
	char want[64];
	fill_prng(buf, 1 << 20, big_seed(0, HELD_AT >> 20));
	memcpy(want, buf + (HELD_AT & ((1 << 20) - 1)), sizeof want);
	CHECK(read(held, buf, sizeof want) == (ssize_t)sizeof want && memcmp(buf, want, sizeof want) == 0,
	      "the held fd does not read f0's bytes at its offset");
	struct stat st;
	CHECK(stat(name[1], &st) == 0 && st.st_uid == 1234 && st.st_gid == 5678 && (st.st_mode & 07777) == 0640 &&
		      st.st_mtim.tv_sec == BIG_MTIME.tv_sec && st.st_mtim.tv_nsec == BIG_MTIME.tv_nsec,
	      "f1: owner %u:%u, mode %o, mtime %lld.%09ld", st.st_uid, st.st_gid, st.st_mode & 07777,
	      (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	sp = open(name[BIG_FILES], O_RDONLY | O_CLOEXEC);
	CHECK(sp >= 0 && fstat(sp, &st) == 0, "%s: %s", name[BIG_FILES], strerror(errno));
	if (sp >= 0) {
		CHECK(st.st_size == SPARSE_LEN, "sparse: size %lld", (long long)st.st_size);
		CHECK(st.st_blocks * 512 == 2 << 20, "sparse: %lld bytes of blocks, not 2 MiB (holes filled?)",
		      (long long)st.st_blocks * 512);
		off_t d0 = lseek(sp, 0, SEEK_DATA), h0 = lseek(sp, 0, SEEK_HOLE);
		off_t d1 = lseek(sp, 1 << 20, SEEK_DATA), h1 = lseek(sp, d1, SEEK_HOLE);
		CHECK(d0 == 0 && h0 == 1 << 20 && d1 == SPARSE_LEN - (1 << 20) && h1 == SPARSE_LEN,
		      "sparse: data at %lld..%lld and %lld..%lld, not 0..1M and 1023M..1G", (long long)d0,
		      (long long)h0, (long long)d1, (long long)h1);
		big_check(sp, BIG_FILES, 0, buf, "sparse");
		big_check(sp, BIG_FILES, (SPARSE_LEN >> 20) - 1, buf, "sparse");
		close(sp);
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	if (strcmp(mode, "uts") == 0) {
		SETUP(unshare(CLONE_NEWUTS));
		set_uts();
		signal_ready();
		wait_go();
		check_uts();
	} else if (strcmp(mode, "mnt") == 0) {
		build_tree();
		execl("/nsview", "nsview", "/", "mnt2", (char *)NULL);
		die_setup("exec /nsview in the new root: %s", strerror(errno));
	} else if (strcmp(mode, "mnt2") == 0) {
		static char before[65536];
		/* stdin was the host's /dev/null, outside this root: the tree's own instead (as a
		 * container runtime gives it) */
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, 0) < 0)
			die_setup("/dev/null: %s", strerror(errno));
		close(null);
		/* and out.log through this root's mount, not the host's */
		int log = open("/out.log", O_WRONLY | O_APPEND);
		if (log < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
			die_setup("/out.log: %s", strerror(errno));
		close(log);
		mountinfo(before, sizeof before);
		/* a pty pair of the tree's own devpts, both ends held */
		int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (m < 0 || unlockpt(m) < 0)
			die_setup("/dev/ptmx: %s", strerror(errno));
		char pts[64];
		if (ptsname_r(m, pts, sizeof pts) != 0)
			die_setup("ptsname: %s", strerror(errno));
		int sl = open(pts, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (sl < 0)
			die_setup("open %s: %s", pts, strerror(errno));
		signal_ready();
		wait_go();
		check_mnt(before);
		check_pty(m, sl, pts);
	} else if (strcmp(mode, "pidmnt") == 0) {
		/* a container: pid 1 of a new pid namespace in the "mnt" tree (the test dumps it) */
		SETUP(unshare(CLONE_NEWPID));
		pid_t c = fork();
		if (c < 0)
			die_setup("fork: %s", strerror(errno));
		if (c == 0) {
			build_tree();
			execl("/nsview", "nsview", "/", "mnt2", (char *)NULL);
			die_setup("exec /nsview in the new root: %s", strerror(errno));
		}
		char buf[32];
		snprintf(buf, sizeof buf, "%d\n", (int)c);
		if (write_file_atomic("child", buf) < 0)
			die_setup("cannot write the child's pid");
		for (;;)
			pause();
	} else if (strcmp(mode, "runmnt") == 0) {
		static const char TMPTEXT[] = "in the job's private /tmp\n", OWNTEXT[] = "in the job's own tmpfs\n";
		SETUP(put("/tmp/runmnt.txt", TMPTEXT));
		SETUP(mkdir("/tmp/own", 0750));
		SETUP(mount("tmpfs", "/tmp/own", "tmpfs", MS_NOSUID, "size=1m,mode=0750"));
		SETUP(put("/tmp/own/data.txt", OWNTEXT));
		signal_ready();
		wait_go();
		char buf[128];
		CHECK(read_file("/tmp/runmnt.txt", buf, sizeof buf) >= 0 && strcmp(buf, TMPTEXT) == 0,
		      "/tmp/runmnt.txt lost or changed");
		CHECK(read_file("/tmp/own/data.txt", buf, sizeof buf) >= 0 && strcmp(buf, OWNTEXT) == 0,
		      "/tmp/own/data.txt lost or changed");
		struct statfs fs;
		struct stat a, b;
		CHECK(statfs("/tmp/own", &fs) == 0 && fs.f_type == TMPFS_MAGIC, "/tmp/own is not a tmpfs");
		CHECK(stat("/tmp", &a) == 0 && stat("/tmp/own", &b) == 0 && a.st_dev != b.st_dev,
		      "/tmp/own is not a mount of its own");
		CHECK(statfs("/tmp", &fs) == 0 && fs.f_type == TMPFS_MAGIC, "/tmp is not the job's tmpfs");
	} else if (strcmp(mode, "mnt-ramfs") == 0) {
		SETUP(unshare(CLONE_NEWNS));
		SETUP(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL));
		char dir[4096];
		snprintf(dir, sizeof dir, "%s/ramfs", W);
		SETUP(mkdir(dir, 0755));
		SETUP(mount("ramfs", dir, "ramfs", 0, NULL));
		signal_ready();
		wait_go();
	} else if (strcmp(mode, "bigtmpfs") == 0) {
		bigtmpfs();
	} else if (strcmp(mode, "mnt-host") == 0) {
		/* a plain unshare -m: a copy of the host's whole mount tree */
		SETUP(unshare(CLONE_NEWNS));
		signal_ready();
		wait_go();
	} else if (strcmp(mode, "user") == 0) {
		/* a child in a user namespace of its own (unmapped: it could not write a file) */
		int p[2];
		SETUP(pipe(p));
		pid_t c = fork();
		if (c < 0)
			die_setup("fork: %s", strerror(errno));
		if (c == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			char b = unshare(CLONE_NEWUSER) == 0 ? 'u' : 'e';
			if (write(p[1], &b, 1) != 1)
				_exit(2);
			for (;;)
				pause();
		}
		char b = 0;
		if (read(p[0], &b, 1) != 1 || b != 'u')
			die_setup("the child could not unshare its user namespace");
		char buf[32];
		snprintf(buf, sizeof buf, "%d\n", (int)c);
		if (write_file_atomic("child", buf) < 0)
			die_setup("cannot write the child's pid");
		signal_ready();
		wait_go();
		kill(c, SIGKILL);
	} else {
		die_setup("unknown mode %s", mode);
	}
	finish();
}
