/*
 * aio_ring [carry|inflight]: a process with a Linux AIO context (io_setup).
 *
 * carry (default): reads of a file submitted with eventfd notification (IOCB_FLAG_RESFD); the
 * ring is first run around almost once (submitted and reaped), then 10 reads are submitted
 * and 4 reaped, so that 6 completions wait in the ring across its end (head near nr, tail
 * past 0). After go: the context id is the same, io_getevents gives exactly those 6 events
 * (data, obj, res, and the bytes read), nothing more (no event of anyone else), the eventfd
 * counts the 10 completions, and a new read is submitted and completes.
 *
 * inflight: one completed read in the ring and one IOCB_CMD_POLL on an empty pipe, in flight:
 * ferry must refuse the dump. After go (the process left running) the pipe is written: the
 * poll completes, and io_getevents gives the read then the poll, and nothing else.
 *
 * forked: a child forked after io_setup, alive (its parent's ring mapped, no context of its
 * own): ferry must refuse the dump by name. After go the parent's context still works.
 */
#include "common.h"
#include <linux/aio_abi.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

struct ring {
	unsigned id, nr, head, tail, magic, compat, incompat, header_length;
	struct io_event ev[];
};

static aio_context_t ctx;
static struct ring *R;

static long submit(struct iocb *cb)
{
	struct iocb *cbs[1] = { cb };
	return syscall(SYS_io_submit, ctx, 1, cbs);
}

static long getevents(long min, long max, struct io_event *ev, long timeout_ms)
{
	struct timespec ts = { timeout_ms / 1000, (timeout_ms % 1000) * 1000000L };
	return syscall(SYS_io_getevents, ctx, min, max, ev, &ts);
}

/* Wait until the ring holds n unreaped events (the reads complete in io_submit, but a disk
 * read would not). */
static void wait_unreaped(unsigned n)
{
	for (int i = 0; i < 5000; i++) {
		if ((R->tail + R->nr - R->head) % R->nr == n)
			return;
		usleep(1000);
	}
	die_setup("the ring never held %u events (head %u tail %u)", n, R->head, R->tail);
}

static void read_iocb(struct iocb *cb, int fd, int efd, char *buf, size_t len, off_t off, uint64_t data)
{
	memset(cb, 0, sizeof *cb);
	cb->aio_fildes = (uint32_t)fd;
	cb->aio_lio_opcode = IOCB_CMD_PREAD;
	cb->aio_buf = (uint64_t)(uintptr_t)buf;
	cb->aio_nbytes = len;
	cb->aio_offset = off;
	cb->aio_data = data;
	if (efd >= 0) {
		cb->aio_flags = IOCB_FLAG_RESFD;
		cb->aio_resfd = (uint32_t)efd;
	}
}

static int carry(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/data", W);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	SETUP(fd);
	static char content[16 * 100];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (char)('a' + i * 7 % 26);
	SETUP(write(fd, content, sizeof content) == (ssize_t)sizeof content ? 0 : -1);
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	SETUP(efd);

	/* Around the ring almost once: head and tail end 3 slots before its end. */
	static struct iocb cbs[16];
	static char bufs[16][16];
	struct io_event ev[16];
	unsigned spins = 0;
	while (R->tail != R->nr - 3) {
		read_iocb(&cbs[0], fd, -1, bufs[0], 16, 0, 1);
		SETUP(submit(&cbs[0]) == 1 ? 0 : -1);
		SETUP(getevents(1, 1, ev, 1000) == 1 ? 0 : -1);
		if (++spins > 100000)
			die_setup("the ring's tail never reached %u", R->nr - 3);
	}
	uint64_t cnt;
	(void)!read(efd, &cnt, sizeof cnt);
	/* 10 reads, 4 reaped: 6 wait, from slot nr-3 across the end to slot 2. */
	for (int i = 0; i < 10; i++) {
		read_iocb(&cbs[i], fd, efd, bufs[i], 16, 16 * (off_t)(i + 1), 100 + (uint64_t)i);
		SETUP(submit(&cbs[i]) == 1 ? 0 : -1);
	}
	wait_unreaped(10);
	SETUP(getevents(4, 4, ev, 1000) == 4 ? 0 : -1);
	for (int i = 0; i < 4; i++)
		SETUP(ev[i].data == 100 + (uint64_t)i ? 0 : -1);
	unsigned head0 = R->head, tail0 = R->tail, nr0 = R->nr;
	aio_context_t ctx0 = ctx;
	fprintf(stderr, "ring %#lx: nr %u head %u tail %u\n", (unsigned long)ctx, nr0, head0, tail0);
	signal_ready();
	wait_go();

	CHECK(ctx == ctx0 && (uintptr_t)R == ctx, "the context id moved");
	CHECK(R->nr == nr0 && R->head == head0 && R->tail == tail0, "ring header nr/head/tail %u/%u/%u, was %u/%u/%u",
	      R->nr, R->head, R->tail, nr0, head0, tail0);
	CHECK(read(efd, &cnt, sizeof cnt) == sizeof cnt && cnt == 10, "the eventfd counts %llu completions, not 10",
	      (unsigned long long)cnt);
	long n = getevents(6, 16, ev, 1000);
	CHECK(n == 6, "io_getevents gave %ld events, not the 6 pending", n);
	for (long i = 0; i < n && i < 6; i++) {
		int k = 4 + (int)i;
		CHECK(ev[i].data == 100 + (uint64_t)k && ev[i].obj == (uint64_t)(uintptr_t)&cbs[k] && ev[i].res == 16 &&
			      ev[i].res2 == 0,
		      "event %ld: data %llu obj %#llx res %lld, expected %d %p 16", i, (unsigned long long)ev[i].data,
		      (unsigned long long)ev[i].obj, (long long)ev[i].res, 100 + k, (void *)&cbs[k]);
		CHECK(!memcmp(bufs[k], content + 16 * (k + 1), 16), "the bytes read by request %d differ", k);
	}
	n = getevents(0, 16, ev, 0);
	CHECK(n == 0, "io_getevents found %ld more events (data %llu)", n, n > 0 ? (unsigned long long)ev[0].data : 0ULL);

	/* New requests: more than the ring's end away, all complete, and the eventfd counts them. */
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 8; i++) {
			read_iocb(&cbs[i], fd, efd, bufs[i], 16, 16 * (off_t)(i + 20), 500 + (uint64_t)i);
			CHECK(submit(&cbs[i]) == 1, "a new io_submit failed: %s", strerror(errno));
		}
		n = getevents(8, 16, ev, 1000);
		CHECK(n == 8, "round %d: %ld of 8 new requests completed", round, n);
		for (long i = 0; i < n; i++)
			CHECK(ev[i].data == 500 + (uint64_t)i && ev[i].res == 16, "round %d: new event %ld data %llu res %lld",
			      round, i, (unsigned long long)ev[i].data, (long long)ev[i].res);
		CHECK(!memcmp(bufs[7], content + 16 * 27, 16), "the bytes of a new read differ");
	}
	CHECK(read(efd, &cnt, sizeof cnt) == sizeof cnt && cnt == 24, "the eventfd counts %llu new completions, not 24",
	      (unsigned long long)cnt);
	finish();
}

static int inflight(void)
{
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	SETUP(fd);
	int p[2];
	SETUP(pipe2(p, O_CLOEXEC));
	static struct iocb rd, pl;
	static char buf[16];
	read_iocb(&rd, fd, -1, buf, 4, 0, 0x1234);
	SETUP(submit(&rd) == 1 ? 0 : -1);
	wait_unreaped(1);
	memset(&pl, 0, sizeof pl);
	pl.aio_fildes = (uint32_t)p[0];
	pl.aio_lio_opcode = IOCB_CMD_POLL;
	pl.aio_buf = POLLIN;
	pl.aio_data = 0x5678;
	SETUP(submit(&pl) == 1 ? 0 : -1);
	signal_ready();
	wait_go();
	SETUP(write(p[1], "x", 1) == 1 ? 0 : -1);
	struct io_event ev[4];
	long n = getevents(2, 4, ev, 2000);
	CHECK(n == 2, "io_getevents gave %ld events, not 2", n);
	if (n == 2) {
		CHECK(ev[0].data == 0x1234 && ev[0].res == 4 && !memcmp(buf, "\177ELF", 4), "the read's event: data %llx res %lld",
		      (unsigned long long)ev[0].data, (long long)ev[0].res);
		CHECK(ev[1].data == 0x5678 && (ev[1].res & POLLIN), "the poll's event: data %llx res %lld",
		      (unsigned long long)ev[1].data, (long long)ev[1].res);
	}
	n = getevents(0, 4, ev, 0);
	CHECK(n == 0, "io_getevents found %ld more events", n);
	finish();
}

/* A child forked after io_setup: it has its parent's ring mapped, without a context. */
static int forked(void)
{
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		long r = syscall(SYS_io_submit, ctx, 0, NULL);
		_exit(r < 0 && errno == EINVAL && R->nr > 0 ? 0 : 1);
	}
	int st;
	SETUP(waitpid(child, &st, 0));
	SETUP(WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1);
	child = fork();
	SETUP(child);
	if (child == 0) {
		for (;;)
			pause();
	}
	signal_ready();
	wait_go();
	struct iocb cb;
	static char buf[4];
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	SETUP(fd);
	read_iocb(&cb, fd, -1, buf, 4, 0, 7);
	CHECK(submit(&cb) == 1, "io_submit failed: %s", strerror(errno));
	struct io_event ev[1];
	CHECK(getevents(1, 1, ev, 1000) == 1 && ev[0].data == 7, "the read did not complete");
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	SETUP((int)syscall(SYS_io_setup, 8, &ctx));
	R = (struct ring *)(uintptr_t)ctx;
	if (argc > 2 && !strcmp(argv[2], "inflight"))
		return inflight();
	if (argc > 2 && !strcmp(argv[2], "forked"))
		return forked();
	return carry();
}
