/*
 * ghostnodes: nodes removed while in use.
 *   - the cwd: W/gd-cwd (mode 0751), entered, then rmdir'ed;
 *   - an open directory: W/gd-open (mode 0705) opened twice (two descriptions, fds A and C),
 *     then rmdir'ed;
 *   - a FIFO: W/gd-fifo (mode 0620) opened for reading and for writing, 10 bytes written and
 *     not read, then unlinked;
 *   - a device node under a removed directory: W/gd-devdir/null (char 1:3, mode 0640), opened,
 *     then the node unlinked and the directory removed.
 * After go: each is still there with st_nlink 0, its type and mode (and rdev); A and C are
 * still one inode (and not the cwd's); nothing can be created in the removed directories; the
 * FIFO gives back its 10 bytes, then carries new ones; the device still accepts writes.
 */
#include "common.h"
#include <sys/sysmacros.h>

static int fd_a, fd_c, fifo_r, fifo_w, dev_fd;

static void check_node(const char *what, int fd, mode_t mode, dev_t rdev)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		fail("%s: fstat: %s", what, strerror(errno));
		return;
	}
	CHECK(st.st_nlink == 0, "%s: st_nlink %lu, expected 0 (removed)", what, (unsigned long)st.st_nlink);
	CHECK(st.st_mode == mode, "%s: st_mode %o, expected %o", what, st.st_mode, mode);
	if (rdev)
		CHECK(st.st_rdev == rdev, "%s: st_rdev %lx, expected %lx", what, (unsigned long)st.st_rdev,
		      (unsigned long)rdev);
}

static void check_dead_dir(const char *what, int dirfd)
{
	int n = openat(dirfd, "new-file", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (n >= 0) {
		close(n);
		fail("%s: a file could be created in the removed directory", what);
	} else {
		CHECK(errno == ENOENT, "%s: creating a file failed with errno %d, expected ENOENT", what, errno);
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char p[4096];
	umask(0);

	snprintf(p, sizeof p, "%s/gd-cwd", W);
	SETUP(mkdir(p, 0751));
	SETUP(chdir(p));
	SETUP(rmdir(p));

	snprintf(p, sizeof p, "%s/gd-open", W);
	SETUP(mkdir(p, 0705));
	SETUP(fd_a = open(p, O_RDONLY | O_DIRECTORY));
	SETUP(fd_c = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	SETUP(rmdir(p));

	snprintf(p, sizeof p, "%s/gd-fifo", W);
	SETUP(mkfifo(p, 0620));
	SETUP(fifo_r = open(p, O_RDONLY | O_NONBLOCK));
	SETUP(fifo_w = open(p, O_WRONLY));
	SETUP(write(fifo_w, "0123456789", 10) == 10 ? 0 : -1);
	SETUP(unlink(p));

	snprintf(p, sizeof p, "%s/gd-devdir", W);
	SETUP(mkdir(p, 0700));
	snprintf(p, sizeof p, "%s/gd-devdir/null", W);
	SETUP(mknod(p, S_IFCHR | 0640, makedev(1, 3)));
	SETUP(dev_fd = open(p, O_RDWR));
	SETUP(unlink(p));
	snprintf(p, sizeof p, "%s/gd-devdir", W);
	SETUP(rmdir(p));

	signal_ready();
	wait_go();

	int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cwd < 0) {
		fail("cwd: open(\".\"): %s", strerror(errno));
	} else {
		check_node("cwd", cwd, S_IFDIR | 0751, 0);
		check_dead_dir("cwd", cwd);
	}
	char link[4096];
	ssize_t n = readlink("/proc/self/cwd", link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	CHECK(n > 0 && strstr(link, "gd-cwd (deleted)"), "cwd: /proc/self/cwd reads %s, expected .../gd-cwd (deleted)", link);

	check_node("open directory (fd A)", fd_a, S_IFDIR | 0705, 0);
	check_node("open directory (fd C)", fd_c, S_IFDIR | 0705, 0);
	check_dead_dir("open directory", fd_a);
	struct stat sa, sc, sw;
	if (fstat(fd_a, &sa) == 0 && fstat(fd_c, &sc) == 0) {
		CHECK(sa.st_ino == sc.st_ino && sa.st_dev == sc.st_dev, "fds A and C are not one directory any more");
		if (cwd >= 0 && fstat(cwd, &sw) == 0)
			CHECK(sw.st_ino != sa.st_ino, "the cwd and fd A became one directory");
	}
	CHECK(fcntl(fd_c, F_GETFD) == FD_CLOEXEC, "fd C lost FD_CLOEXEC");

	check_node("FIFO (read end)", fifo_r, S_IFIFO | 0620, 0);
	check_node("FIFO (write end)", fifo_w, S_IFIFO | 0620, 0);
	if (fstat(fifo_r, &sa) == 0 && fstat(fifo_w, &sw) == 0)
		CHECK(sa.st_ino == sw.st_ino, "the FIFO's two ends are not one FIFO any more");
	char buf[64] = { 0 };
	n = read(fifo_r, buf, sizeof buf);
	CHECK(n == 10 && !memcmp(buf, "0123456789", 10), "FIFO: read %zd bytes (%.*s), expected 0123456789", n,
	      n > 0 ? (int)n : 0, buf);
	CHECK(write(fifo_w, "again", 5) == 5, "FIFO: write: %s", strerror(errno));
	n = read(fifo_r, buf, sizeof buf);
	CHECK(n == 5 && !memcmp(buf, "again", 5), "FIFO: read back %zd bytes after a new write", n);

	check_node("device node", dev_fd, S_IFCHR | 0640, makedev(1, 3));
	CHECK(write(dev_fd, "x", 1) == 1, "device node: write: %s", strerror(errno));
	finish();
}
