/*
 * memfd: a memfd held through an fd (with an offset) and a shared mapping, plus a child that
 * holds the same fd. After restore: the name, content and offset are the same, and it is still
 * one object: a write through the child's fd shows in the parent's mapping.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define LEN (1u << 20)

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int fd = memfd_create("ferry-test", 0);
	SETUP(fd);
	SETUP(ftruncate(fd, LEN));
	unsigned char *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	fill_prng(m, LEN, 5);
	SETUP(lseek(fd, 12345, SEEK_SET));
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		/* after go the parent writes "go" at byte 100 of the mapping; answer through the fd */
		for (int i = 0; i < 600000; i++) {
			if (m[100] == 'g') {
				if (pwrite(fd, "ok", 2, 200) != 2)
					_exit(3);
				_exit(0);
			}
			usleep(1000);
		}
		_exit(4);
	}
	char link_before[256] = "", path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	SETUP(readlink(path, link_before, sizeof link_before - 1));
	usleep(100 * 1000);
	signal_ready();
	wait_go();
	char link_now[256] = "";
	CHECK(readlink(path, link_now, sizeof link_now - 1) > 0 && strcmp(link_now, link_before) == 0,
	      "fd link is %s, was %s", link_now, link_before);
	CHECK(lseek(fd, 0, SEEK_CUR) == 12345, "memfd offset changed");
	unsigned char b[4096];
	CHECK(pread(fd, b, sizeof b, 8192) == (ssize_t)sizeof b && memcmp(b, m + 8192, sizeof b) == 0,
	      "fd and mapping disagree");
	unsigned char save[2] = { m[200], m[201] };
	m[100] = 'g';
	for (int i = 0; i < 5000 && !(m[200] == 'o' && m[201] == 'k'); i++)
		usleep(1000);
	CHECK(m[200] == 'o' && m[201] == 'k', "the child's write through its fd did not show in the mapping");
	m[100] = 0;
	m[200] = save[0];
	m[201] = save[1];
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	unsigned char ref[256];
	fill_prng(ref, sizeof ref, 5);
	ref[100] = m[100];
	CHECK(memcmp(m, ref, 100) == 0, "memfd content differs");
	finish();
}
