/*
 * uring: holds an io_uring instance, which ferry does not support. A dump must refuse it, name
 * io_uring in its error, and leave the process running untouched: on go it checks the ring fd
 * and its memory are as before.
 */
#include "common.h"
#include <linux/io_uring.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int fd = (int)syscall(SYS_io_uring_setup, 8, &p);
	if (fd < 0)
		die_setup("io_uring_setup: %s", strerror(errno));
	char link0[256] = { 0 }, path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	if (readlink(path, link0, sizeof link0 - 1) < 0)
		die_setup("readlink %s: %s", path, strerror(errno));
	static unsigned char buf[1 << 20];
	fill_prng(buf, sizeof buf, 0x0e1);
	fprintf(stderr, "uring: fd %d -> %s\n", fd, link0);

	signal_ready();
	wait_go();

	char link1[256] = { 0 };
	CHECK(fcntl(fd, F_GETFD) >= 0, "io_uring fd %d is gone: %s", fd, strerror(errno));
	if (readlink(path, link1, sizeof link1 - 1) < 0)
		fail("readlink %s: %s", path, strerror(errno));
	else
		CHECK(strcmp(link0, link1) == 0, "fd %d is %s, was %s", fd, link1, link0);
	ssize_t off = check_prng(buf, sizeof buf, 0x0e1);
	CHECK(off < 0, "memory differs at offset %zd", off);
	finish();
}
