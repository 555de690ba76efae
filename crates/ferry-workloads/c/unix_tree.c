/*
 * unix_tree: unix sockets shared by a parent and its child, with data in flight, dumped as a tree.
 *   stream   socketpair(STREAM): the parent keeps end 0, the child end 1 as its stdin (fd 0,
 *            a socket whose peer is in the tree, so not inherited); "p2c-1" and "p2c-2"
 *            sent parent->child, "c2p" child->parent, nobody has read them
 *   dgram    socketpair(DGRAM): datagrams "p2c-a", "p2c-bb" parent->child, "c2p-d" child->parent
 *   seq      socketpair(SEQPACKET): record "seq-1" child->parent
 *   shared   one datagram socket bound to W/tree.sock, held by both (the same open file): it
 *            holds "shared-msg", sent to itself
 * After go (the parent forwards it to the child): each side checks its queues and the
 * boundaries; the child takes "shared-msg" from the shared socket, answers "child-ok" on the
 * stream and exits 0 if all was well; the parent reads "child-ok", reaps the child (status 0)
 * and checks that the shared socket is now empty (it is the same socket as the child's).
 */
#include "common.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/time.h>
#include <sys/wait.h>

static char buf[4096];

static void expect_msg(int s, const char *who, const char *want)
{
	ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
	size_t len = strlen(want);
	if (n != (ssize_t)len || memcmp(buf, want, len) != 0)
		fail("%s: got %zd bytes \"%.*s\" (%s), want \"%s\"", who, n, (int)(n > 0 ? n : 0), buf,
		     n < 0 ? strerror(errno) : "", want);
}

static void expect_empty(int s, const char *who)
{
	ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
	if (n >= 0 || errno != EAGAIN)
		fail("%s: queue not empty (%zd)", who, n);
}

static void put(int s, const char *m)
{
	if (send(s, m, strlen(m), MSG_NOSIGNAL) != (ssize_t)strlen(m))
		die_setup("send %s: %s", m, strerror(errno));
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int st[2], dg[2], sq[2], sync[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
	SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
	SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq));
	SETUP(pipe(sync));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s/tree.sock", W);
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sa.sun_path) + 1);
	unlink(sa.sun_path);
	int shared = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(shared);
	SETUP(bind(shared, (struct sockaddr *)&sa, salen));
	SETUP(sendto(shared, "shared-msg", 10, 0, (struct sockaddr *)&sa, salen));
	pid_t parent = getpid();
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		close(st[0]);
		close(dg[0]);
		close(sq[0]);
		close(sync[0]);
		/* the child's end of the stream is its stdin */
		SETUP(dup2(st[1], 0));
		close(st[1]);
		st[1] = 0;
		put(st[1], "c2p");
		put(dg[1], "c2p-d");
		put(sq[1], "seq-1");
		SETUP(write(sync[1], "k", 1));
		close(sync[1]);
		wait_go();
		if (getppid() != parent)
			fail("child: parent is %d, want %d", getppid(), parent);
		char got[32];
		ssize_t n = recv(st[1], got, sizeof got, MSG_DONTWAIT);
		if (n != 10 || memcmp(got, "p2c-1p2c-2", 10) != 0)
			fail("child stream: %zd bytes \"%.*s\"", n, (int)(n > 0 ? n : 0), got);
		expect_msg(dg[1], "child dgram 1", "p2c-a");
		expect_msg(dg[1], "child dgram 2", "p2c-bb");
		expect_empty(dg[1], "child dgram");
		expect_msg(shared, "child shared", "shared-msg");
		put(st[1], failures ? "child-fail" : "child-ok");
		_exit(failures ? 1 : 0);
	}
	close(st[1]);
	close(dg[1]);
	close(sq[1]);
	close(sync[1]);
	char k;
	SETUP(read(sync[0], &k, 1) == 1 ? 0 : -1);
	close(sync[0]);
	put(st[0], "p2c-1");
	put(st[0], "p2c-2");
	put(dg[0], "p2c-a");
	put(dg[0], "p2c-bb");
	signal_ready();
	wait_go();
	expect_msg(sq[0], "parent seqpacket", "seq-1");
	expect_empty(sq[0], "parent seqpacket");
	expect_msg(dg[0], "parent dgram", "c2p-d");
	expect_empty(dg[0], "parent dgram");
	kill(child, SIGUSR2);
	/* "c2p" is queued; "child-ok" follows once the child is done */
	struct timeval tv = { 20, 0 };
	setsockopt(st[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	char got[64];
	size_t have = 0;
	double end = mono_now() + 20;
	while (have < 11 && mono_now() < end) {
		ssize_t n = recv(st[0], got + have, sizeof got - have, 0);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	if (have != 11 || memcmp(got, "c2pchild-ok", 11) != 0)
		fail("parent stream: %zu bytes \"%.*s\", want \"c2pchild-ok\"", have, (int)have, got);
	int status;
	if (waitpid(child, &status, 0) != child)
		fail("waitpid: %s", strerror(errno));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("child ended with status %#x", status);
	expect_empty(shared, "parent shared (the child took the message)");
	finish();
}
