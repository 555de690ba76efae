/*
 * files: the file descriptor table.
 *   10    W/data.txt O_RDWR, FD_CLOEXEC, offset 1234
 *   500   W/data.txt opened separately (its own offset 99: must not merge with fd 10)
 *   11    W/append.txt O_WRONLY|O_APPEND
 *   12    W/data.txt O_RDONLY|O_NONBLOCK
 *   20,21 one open file (dup): a shared offset; FD_CLOEXEC only on 20 (it is per fd)
 *   1000  W/deleted.txt, unlinked while open, offset 7; also mapped MAP_SHARED
 *   1001  W/deleted.txt opened a second time (own offset 3): after restore 1000, 1001 and the
 *         mapping must still be one file (a write through one is seen through the others)
 *   30-32 /dev/null (write), /dev/zero (read), /dev/urandom (read, FD_CLOEXEC)
 *   1     stdout, a file (the harness's out.log): same file, same offset, writes land after it
 * Every fd's flags, FD_CLOEXEC, offset, file identity (device and inode; for the deleted file,
 * its contents) and /proc/self/fd link must be unchanged, and no other fd may appear or vanish.
 */
#include "common.h"
#include <dirent.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>

#define DATA_LEN 8192

struct fdrec {
	int fd;
	int fdflags, flflags;
	off_t off;
	struct stat st;
	char link[4096];
};

static const int fds[] = { 1, 10, 500, 11, 12, 20, 21, 1000, 1001, 30, 31, 32 };
#define NFDS (sizeof fds / sizeof fds[0])
static struct fdrec before[NFDS];

static void record(int fd, struct fdrec *r)
{
	char path[64];
	memset(r, 0, sizeof *r);
	r->fd = fd;
	r->fdflags = fcntl(fd, F_GETFD);
	r->flflags = fcntl(fd, F_GETFL);
	r->off = lseek(fd, 0, SEEK_CUR);
	if (fstat(fd, &r->st) < 0)
		r->st.st_ino = 0;
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	if (readlink(path, r->link, sizeof r->link - 1) < 0)
		snprintf(r->link, sizeof r->link, "(readlink: %s)", strerror(errno));
}

static int open_at(const char *name, int flags, int at)
{
	char path[4096];
	if (name[0] == '/')
		snprintf(path, sizeof path, "%s", name);
	else
		snprintf(path, sizeof path, "%s/%s", W, name);
	int fd = open(path, flags, 0644);
	if (fd < 0)
		die_setup("open %s: %s", path, strerror(errno));
	if (fd != at) {
		if (dup3(fd, at, flags & O_CLOEXEC) < 0)
			die_setup("dup3 %d -> %d: %s", fd, at, strerror(errno));
		close(fd);
	}
	return at;
}

/* the open fds, as a sorted list written into out */
static int list_fds(int *out, int cap)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0, self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d)) && n < cap) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd != self)
			out[n++] = fd;
	}
	closedir(d);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
			int t = out[j];
			out[j] = out[j - 1];
			out[j - 1] = t;
		}
	return n;
}

static void write_all(int fd, const char *s)
{
	size_t len = strlen(s);
	if (write(fd, s, len) != (ssize_t)len)
		fail("write to fd %d: %s", fd, strerror(errno));
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	static char data[DATA_LEN];
	fill_prng(data, sizeof data, 0xda7a);
	for (size_t i = 0; i < sizeof data; i++) /* printable, so the files can be looked at */
		data[i] = (char)('a' + (unsigned char)data[i] % 26);
	char path[4096];
	snprintf(path, sizeof path, "%s/data.txt", W);
	int tmp = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (tmp < 0 || write(tmp, data, sizeof data) != (ssize_t)sizeof data)
		die_setup("write %s: %s", path, strerror(errno));
	close(tmp);

	open_at("data.txt", O_RDWR | O_CLOEXEC, 10);
	SETUP(lseek(10, 1234, SEEK_SET));
	open_at("data.txt", O_RDONLY, 500);
	SETUP(lseek(500, 99, SEEK_SET));
	open_at("append.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 11);
	write_all(11, "line written before the checkpoint\n");
	open_at("data.txt", O_RDONLY | O_NONBLOCK, 12);
	open_at("data.txt", O_RDWR | O_CLOEXEC, 20);
	SETUP(dup2(20, 21));
	SETUP(lseek(21, 3000, SEEK_SET));
	open_at("deleted.txt", O_RDWR | O_CREAT | O_TRUNC, 1000);
	write_all(1000, "contents of a file deleted while open\n");
	SETUP(lseek(1000, 7, SEEK_SET));
	open_at("deleted.txt", O_RDONLY, 1001);
	SETUP(lseek(1001, 3, SEEK_SET));
	char *dmap = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 1000, 0);
	if (dmap == MAP_FAILED)
		die_setup("mmap deleted.txt: %s", strerror(errno));
	snprintf(path, sizeof path, "%s/deleted.txt", W);
	SETUP(unlink(path));
	open_at("/dev/null", O_WRONLY, 30);
	open_at("/dev/zero", O_RDONLY, 31);
	open_at("/dev/urandom", O_RDONLY | O_CLOEXEC, 32);

	/* stdout: a line before, its offset remembered */
	struct stat st1;
	int stdout_is_file = fstat(1, &st1) == 0 && S_ISREG(st1.st_mode);
	static const char line1[] = "files: stdout line written before the checkpoint\n";
	static const char line2[] = "files: stdout line written after the restore\n";
	if (stdout_is_file)
		write_all(1, line1);
	else
		fprintf(stderr, "files: stdout is not a regular file: its checks are skipped\n");

	for (size_t i = 0; i < NFDS; i++)
		record(fds[i], &before[i]);
	int open_before[256], open_after[256];
	int nbefore = list_fds(open_before, 256);
	if (nbefore < 0)
		die_setup("cannot list /proc/self/fd: %s", strerror(errno));
	/* nothing may write to stdout/stderr (one shared offset) until the stdout check */
	signal_ready();
	wait_go();

	struct fdrec now[NFDS];
	for (size_t i = 0; i < NFDS; i++)
		record(fds[i], &now[i]);
	/*
	 * stdout first, before any failure message moves the offset it shares with stderr: the
	 * next line must land right after the one written before the checkpoint.
	 */
	if (stdout_is_file && before[0].fdflags >= 0) {
		write_all(1, line2);
		int rfd = open("/proc/self/fd/1", O_RDONLY);
		if (rfd < 0)
			fail("reopen stdout: %s", strerror(errno));
		else {
			char got[sizeof line1 + sizeof line2];
			size_t want = sizeof line1 - 1 + sizeof line2 - 1;
			ssize_t n = pread(rfd, got, want, before[0].off - (off_t)(sizeof line1 - 1));
			CHECK(n == (ssize_t)want && memcmp(got, line1, sizeof line1 - 1) == 0 &&
				      memcmp(got + sizeof line1 - 1, line2, sizeof line2 - 1) == 0,
			      "stdout: the line written after the restore did not follow the one written before");
			close(rfd);
		}
	}

	for (size_t i = 0; i < NFDS; i++) {
		struct fdrec *b = &before[i], *a = &now[i];
		if (i == 0 && !stdout_is_file)
			continue;
		if (a->fdflags < 0) {
			fail("fd %d is not open (was %s)", b->fd, b->link);
			continue;
		}
		CHECK(a->fdflags == b->fdflags, "fd %d: F_GETFD %#x, was %#x", b->fd, a->fdflags, b->fdflags);
		CHECK(a->flflags == b->flflags, "fd %d: F_GETFL %#o, was %#o", b->fd, a->flflags, b->flflags);
		CHECK(a->off == b->off, "fd %d: offset %lld, was %lld", b->fd, (long long)a->off, (long long)b->off);
		/* a deleted file cannot keep its inode (it died with the process): its content is checked below */
		CHECK(b->fd == 1000 || b->fd == 1001 || (a->st.st_dev == b->st.st_dev && a->st.st_ino == b->st.st_ino),
		      "fd %d: now %s (dev %#lx ino %lu), was %s (dev %#lx ino %lu)", b->fd, a->link,
		      (unsigned long)a->st.st_dev, (unsigned long)a->st.st_ino, b->link, (unsigned long)b->st.st_dev,
		      (unsigned long)b->st.st_ino);
		CHECK(a->st.st_mode == b->st.st_mode && a->st.st_rdev == b->st.st_rdev,
		      "fd %d: mode %#o rdev %u:%u, was %#o rdev %u:%u", b->fd, a->st.st_mode, major(a->st.st_rdev),
		      minor(a->st.st_rdev), b->st.st_mode, major(b->st.st_rdev), minor(b->st.st_rdev));
		CHECK(strcmp(a->link, b->link) == 0, "fd %d: /proc/self/fd link is %s, was %s", b->fd, a->link, b->link);
	}

	int nafter = list_fds(open_after, 256);
	if (nafter != nbefore || memcmp(open_before, open_after, (size_t)nbefore * sizeof(int)) != 0) {
		char b[1024] = "", a[1024] = "";
		for (int i = 0; i < nbefore; i++)
			snprintf(b + strlen(b), sizeof b - strlen(b), " %d", open_before[i]);
		for (int i = 0; i < nafter; i++)
			snprintf(a + strlen(a), sizeof a - strlen(a), " %d", open_after[i]);
		fail("open fds are [%s ], were [%s ]", a, b);
	}

	/* behaviour */
	char buf[64];
	SETUP(lseek(20, 4321, SEEK_SET));
	CHECK(lseek(21, 0, SEEK_CUR) == 4321, "fds 20 and 21 no longer share one offset");
	CHECK(lseek(10, 0, SEEK_CUR) == 1234 && lseek(500, 0, SEEK_CUR) == 99, "separately opened fds share an offset");
	if (pread(10, buf, 16, 1234) != 16 || memcmp(buf, data + 1234, 16) != 0)
		fail("fd 10 does not read data.txt");
	write_all(11, "line written after the restore\n");
	snprintf(path, sizeof path, "%s/append.txt", W);
	char appended[256];
	CHECK(read_file(path, appended, sizeof appended) >= 0 &&
		      strcmp(appended, "line written before the checkpoint\nline written after the restore\n") == 0,
	      "append.txt is not the two lines in order (O_APPEND lost?)");
	CHECK(read(12, buf, 4) == 4 && memcmp(buf, data, 4) == 0, "fd 12 does not read data.txt from offset 0");
	struct stat st;
	CHECK(fstat(1000, &st) == 0 && st.st_nlink == 0, "fd 1000 (deleted file) has %lu links", (unsigned long)st.st_nlink);
	static const char deleted[] = "contents of a file deleted while open\n";
	CHECK(read(1000, buf, sizeof deleted - 1 - 7) == (ssize_t)(sizeof deleted - 1 - 7) &&
		      memcmp(buf, deleted + 7, sizeof deleted - 1 - 7) == 0,
	      "fd 1000 (deleted file) does not read its contents from offset 7");
	struct stat st2;
	CHECK(fstat(1001, &st2) == 0 && st2.st_ino == st.st_ino && st2.st_dev == st.st_dev,
	      "fds 1000 and 1001 are no longer the same deleted file");
	CHECK(pwrite(1000, "ZZ", 2, 0) == 2, "pwrite to the deleted file");
	CHECK(pread(1001, buf, 2, 0) == 2 && memcmp(buf, "ZZ", 2) == 0, "fd 1001 does not see a write through fd 1000");
	CHECK(memcmp(dmap, "ZZ", 2) == 0, "the shared mapping does not see a write through fd 1000");
	dmap[2] = 'Y';
	CHECK(pread(1001, buf, 1, 2) == 1 && buf[0] == 'Y', "fd 1001 does not see a write through the mapping");
	CHECK(write(30, "x", 1) == 1, "write to /dev/null failed");
	memset(buf, 1, 32);
	CHECK(read(31, buf, 32) == 32 && buf[0] == 0 && buf[31] == 0, "/dev/zero does not read zeros");
	CHECK(read(32, buf, 32) == 32, "/dev/urandom read failed");
	finish();
}
