/*
 * posix_shm: a POSIX shared memory object (shm_open, a file in /dev/shm) mapped MAP_SHARED by a
 * parent and its forked child, the parent also holding its fd (with an offset).
 * Before ready the parent fills the first half, the child the second. After restore: both
 * halves hold their patterns, the object is still shared between the two processes and with
 * its file (a marker written through the child's mapping is seen through the parent's mapping
 * and through the fd), and the fd's offset is unchanged. The object is unlinked at the end.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define LEN (1u << 20)

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char name[64];
	snprintf(name, sizeof name, "/ferry-e2e-%d", (int)getpid());
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	SETUP(fd);
	SETUP(ftruncate(fd, LEN));
	SETUP(lseek(fd, 12345, SEEK_SET));
	unsigned char *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	for (unsigned i = 0; i < LEN / 2; i++)
		m[i] = (unsigned char)(i * 7 + 1);
	int to_child[2], to_parent[2];
	SETUP(pipe(to_child));
	SETUP(pipe(to_parent));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		close(fd);
		for (unsigned i = LEN / 2; i < LEN; i++)
			m[i] = (unsigned char)(i * 13 + 3);
		char b;
		if (write(to_parent[1], "r", 1) != 1 || read(to_child[0], &b, 1) != 1)
			_exit(2);
		/* after restore: answer the parent's marker with ours */
		int ok = m[100] == 0xAB;
		m[LEN - 100] = 0xCD;
		if (write(to_parent[1], ok ? "y" : "n", 1) != 1)
			_exit(3);
		_exit(0);
	}
	char b;
	SETUP(read(to_parent[0], &b, 1));
	signal_ready();
	wait_go();
	for (unsigned i = 0; i < LEN / 2; i++)
		if (m[i] != (unsigned char)(i * 7 + 1)) {
			fail("first half byte %u", i);
			break;
		}
	for (unsigned i = LEN / 2; i < LEN; i++)
		if (i != LEN - 100 && m[i] != (unsigned char)(i * 13 + 3)) {
			fail("second half byte %u", i);
			break;
		}
	CHECK(lseek(fd, 0, SEEK_CUR) == 12345, "fd offset %ld", (long)lseek(fd, 0, SEEK_CUR));
	m[100] = 0xAB;
	CHECK(write(to_child[1], "g", 1) == 1, "tell the child");
	CHECK(read(to_parent[0], &b, 1) == 1 && b == 'y', "the child did not see the parent's marker");
	CHECK(m[LEN - 100] == 0xCD, "the parent does not see the child's marker");
	unsigned char via_fd;
	CHECK(pread(fd, &via_fd, 1, LEN - 100) == 1 && via_fd == 0xCD, "the marker is not in the shm object");
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	shm_unlink(name);
	finish();
}
