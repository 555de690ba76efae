/*
 * aio_ring: a process with a Linux AIO context (io_setup) whose ring holds one completed read.
 * ferry does not carry AIO rings yet: the dump must refuse it by name. (Run without ferry, it
 * checks after go that io_getevents returns the completed request and that a new io_submit
 * works, which is what a restore would have to give back.)
 */
#include "common.h"
#include <linux/aio_abi.h>

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	aio_context_t ctx = 0;
	SETUP((int)syscall(SYS_io_setup, 8, &ctx));
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	SETUP(fd);
	char buf[16], buf2[16];
	struct iocb cb = { 0 }, *cbs[1] = { &cb };
	cb.aio_fildes = (uint32_t)fd;
	cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_buf = (uint64_t)(uintptr_t)buf;
	cb.aio_nbytes = 4;
	cb.aio_data = 0x1234;
	SETUP((int)syscall(SYS_io_submit, ctx, 1, cbs) == 1 ? 0 : -1);
	signal_ready();
	wait_go();
	struct io_event ev[2];
	struct timespec ts = { 1, 0 };
	long n = syscall(SYS_io_getevents, ctx, 1, 2, ev, &ts);
	CHECK(n == 1 && ev[0].data == 0x1234 && ev[0].res == 4 && !memcmp(buf, "\177ELF", 4),
	      "io_getevents gave %ld events (data %llx res %lld)", n, n > 0 ? (unsigned long long)ev[0].data : 0ULL,
	      n > 0 ? (long long)ev[0].res : 0LL);
	cb.aio_buf = (uint64_t)(uintptr_t)buf2;
	cb.aio_data = 0x5678;
	CHECK(syscall(SYS_io_submit, ctx, 1, cbs) == 1, "a new io_submit failed: %s", strerror(errno));
	n = syscall(SYS_io_getevents, ctx, 1, 1, ev, &ts);
	CHECK(n == 1 && ev[0].data == 0x5678 && ev[0].res == 4, "the new request did not complete (%ld)", n);
	finish();
}
