/*
 * prefork: a pre-forking TCP server. The master binds 127.0.0.1:<any> (SO_REUSEADDR), listens,
 * writes the port to W/port and forks 3 workers that block in accept() on the shared listener.
 * Each worker answers every request line with "worker I pid P count N: LINE", N counting the
 * requests that worker has served (its own state in its own memory), and closes the
 * connection. The master writes W/ready and waits for go; then it stops the workers with
 * SIGTERM, reaps them (each must end by that signal), checks its listener is still bound to
 * the same port, and reports. The harness talks to the workers between ready and go, before
 * and after the checkpoint.
 */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define WORKERS 3

static void worker(int idx, int lfd)
{
	signal(SIGUSR2, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	unsigned long count = 0;
	for (;;) {
		int c = accept(lfd, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "worker %d: accept: %s\n", idx, strerror(errno));
			_exit(3);
		}
		char line[512];
		size_t len = 0;
		while (len < sizeof line - 1) {
			ssize_t n = read(c, line + len, 1);
			if (n <= 0 || line[len] == '\n')
				break;
			len++;
		}
		line[len] = 0;
		count++;
		char out[700];
		int n = snprintf(out, sizeof out, "worker %d pid %d count %lu: %s\n", idx, (int)getpid(), count, line);
		if (write(c, out, (size_t)n) != n)
			fprintf(stderr, "worker %d: short write\n", idx);
		close(c);
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(lfd);
	int one = 1;
	SETUP(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(lfd, (struct sockaddr *)&a, sizeof a));
	SETUP(listen(lfd, 16));
	socklen_t len = sizeof a;
	SETUP(getsockname(lfd, (struct sockaddr *)&a, &len));
	int port = ntohs(a.sin_port);
	char buf[64];
	snprintf(buf, sizeof buf, "%d\n", port);
	if (write_file_atomic("port", buf) < 0)
		die_setup("cannot write the port file: %s", strerror(errno));
	pid_t pids[WORKERS];
	char list[256] = "";
	for (int i = 0; i < WORKERS; i++) {
		pids[i] = fork();
		SETUP(pids[i]);
		if (pids[i] == 0)
			worker(i, lfd);
		snprintf(list + strlen(list), sizeof list - strlen(list), "%d\n", (int)pids[i]);
	}
	if (write_file_atomic("workers", list) < 0)
		die_setup("cannot write the workers file: %s", strerror(errno));
	fprintf(stderr, "prefork: port %d, workers %s", port, list);
	signal_ready();
	wait_go();

	struct sockaddr_in now;
	len = sizeof now;
	CHECK(getsockname(lfd, (struct sockaddr *)&now, &len) == 0 && ntohs(now.sin_port) == port,
	      "the master's listener is not on port %d any more", port);
	for (int i = 0; i < WORKERS; i++) {
		int st = 0;
		CHECK(waitpid(pids[i], &st, WNOHANG) == 0, "worker %d (pid %d) ended before go, status %#x", i,
		      (int)pids[i], st);
		kill(pids[i], SIGTERM);
	}
	for (int i = 0; i < WORKERS; i++) {
		int st = 0;
		pid_t r = waitpid(pids[i], &st, 0);
		CHECK(r == pids[i] && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "worker %d (pid %d): waitpid %d status %#x",
		      i, (int)pids[i], (int)r, st);
	}
	finish();
}
