/*
 * tcpkeep [ADDR]: established TCP connections kept across the checkpoint (dump --tcp-established)
 * or a migration (migrate --tcp-established); ADDR is where it listens (default 127.0.0.1).
 *   C <-> A  both ends in the process: C sent 1000 bytes A has not read; A wrote until its send
 *            queue and C's receive queue were full (a byte pattern), none of it read yet.
 *   X <-> A2 X is the test, outside the tree: it sent "ping1", got "pong1", then sent "ping2",
 *            which A2 has not read yet at the checkpoint.
 * After go: A2 reads "ping2" and answers "pong2" (the test checks it got it on the same
 * connection, then sends "ping3" for "pong3"); C reads every byte of the pattern in order and
 * A reads C's 1000 bytes; then one more exchange each way on C <-> A.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int read_exact(int fd, char *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = read(fd, buf + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

static void exchange(int fd, const char *expect, const char *reply)
{
	char b[6] = "";
	if (read_exact(fd, b, 5) < 0) {
		fail("A2: reading %s: %s", expect, strerror(errno));
		return;
	}
	CHECK(memcmp(b, expect, 5) == 0, "A2: got %.5s, want %s", b, expect);
	CHECK(write(fd, reply, 5) == 5, "A2: writing %s: %s", reply, strerror(errno));
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	/* argv[2]: the address to listen on (a service address that moves with the process) */
	struct sockaddr_in la = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (argc > 2 && inet_pton(AF_INET, argv[2], &la.sin_addr) != 1)
		die_setup("bad address %s", argv[2]);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(l);
	SETUP(bind(l, (struct sockaddr *)&la, sizeof la));
	SETUP(listen(l, 8));
	socklen_t len = sizeof la;
	SETUP(getsockname(l, (struct sockaddr *)&la, &len));
	int c = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(c);
	SETUP(connect(c, (struct sockaddr *)&la, sizeof la));
	int a = accept(l, NULL, NULL);
	SETUP(a);
	char from_c[1000];
	for (int i = 0; i < 1000; i++)
		from_c[i] = (char)('a' + i % 26);
	SETUP(write(c, from_c, sizeof from_c));
	SETUP(fcntl(a, F_SETFL, O_NONBLOCK));
	static unsigned char chunk[4096];
	uint64_t sent = 0;
	for (;;) {
		for (int i = 0; i < 4096; i++)
			chunk[i] = (unsigned char)((sent + (uint64_t)i) % 251);
		ssize_t n = write(a, chunk, sizeof chunk);
		if (n < 0 && errno == EAGAIN)
			break;
		SETUP(n);
		sent += (uint64_t)n;
	}
	SETUP(fcntl(a, F_SETFL, 0));
	char port[32];
	snprintf(port, sizeof port, "%d\n", ntohs(la.sin_port));
	SETUP(write_file_atomic("port", port));
	int a2 = accept(l, NULL, NULL);
	SETUP(a2);
	exchange(a2, "ping1", "pong1");
	fprintf(stderr, "tcpkeep: port %s, %llu bytes queued from A to C\n", strtok(port, "\n"), (unsigned long long)sent);
	signal_ready();
	wait_go();
	exchange(a2, "ping2", "pong2");
	exchange(a2, "ping3", "pong3");
	uint64_t got = 0;
	unsigned char buf[4096];
	while (got < sent) {
		size_t want = sent - got < sizeof buf ? (size_t)(sent - got) : sizeof buf;
		ssize_t n = read(c, buf, want);
		if (n <= 0) {
			fail("C: read after %llu of %llu bytes: %s", (unsigned long long)got, (unsigned long long)sent,
			     n == 0 ? "EOF" : strerror(errno));
			break;
		}
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != (unsigned char)((got + (uint64_t)i) % 251)) {
				fail("C: byte %llu is %u", (unsigned long long)(got + (uint64_t)i), buf[i]);
				finish();
			}
		got += (uint64_t)n;
	}
	char back[1000];
	CHECK(read_exact(a, back, sizeof back) == 0 && memcmp(back, from_c, sizeof back) == 0, "A: C's bytes differ");
	CHECK(write(a, "after", 5) == 5 && read_exact(c, back, 5) == 0 && memcmp(back, "after", 5) == 0,
	      "A -> C after restore");
	CHECK(write(c, "again", 5) == 5 && read_exact(a, back, 5) == 0 && memcmp(back, "again", 5) == 0,
	      "C -> A after restore");
	finish();
}
