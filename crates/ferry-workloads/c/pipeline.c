/*
 * pipeline: a process tree streaming data through pipes across a checkpoint.
 *   root      forks producer, filter and consumer, then waits for go (and, after go, in waitpid)
 *   producer  writes 8-byte sequence numbers 0, 1, 2 ... into pipe A, a few thousand a second,
 *             until SIGUSR1; then closes it and exits with the count it wrote (via a file)
 *   filter    copies pipe A to pipe B in odd-sized chunks (so bytes sit in both pipes)
 *   consumer  reads pipe B and checks that every number is the previous one + 1; at EOF it
 *             writes the count it saw and exits 0 if nothing was lost, duplicated or reordered
 * On go the root stops the producer, reaps all three (waitpid) and checks that the consumer saw
 * exactly what the producer wrote. Each child also checks that its pid and parent are unchanged.
 */
#include "common.h"
#include <sys/wait.h>
#include <sys/syscall.h>

static volatile sig_atomic_t stop_producing;
static void on_usr1(int s) { (void)s; stop_producing = 1; }

static void child_check(pid_t pid, pid_t ppid, const char *who)
{
	if (getpid() != pid || getppid() != ppid) {
		fprintf(stderr, "%s: pid %d ppid %d, expected %d %d\n", who, getpid(), getppid(), pid, ppid);
		_exit(3);
	}
}

static void put_count(const char *name, uint64_t n)
{
	char buf[64];
	snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)n);
	if (write_file_atomic(name, buf) < 0)
		_exit(4);
}

static uint64_t get_count(const char *name)
{
	char path[4096], buf[64] = "";
	snprintf(path, sizeof path, "%s/%s", W, name);
	if (read_file(path, buf, sizeof buf) <= 0)
		return (uint64_t)-1;
	return strtoull(buf, NULL, 10);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int a[2], b[2];
	SETUP(pipe(a));
	SETUP(pipe(b));
	pid_t root = getpid();
	pid_t producer = fork();
	SETUP(producer);
	if (producer == 0) {
		close(a[0]); close(b[0]); close(b[1]);
		pid_t me = getpid();
		struct sigaction sa = { .sa_handler = on_usr1 };
		sigaction(SIGUSR1, &sa, NULL);
		uint64_t n = 0;
		while (!stop_producing) {
			for (int i = 0; i < 16 && !stop_producing; i++, n++)
				if (write(a[1], &n, 8) != 8) {
					if (errno == EINTR) { n--; continue; }
					_exit(5);
				}
			usleep(2000);
		}
		child_check(me, root, "producer");
		put_count("produced", n);
		_exit(0);
	}
	pid_t filter = fork();
	SETUP(filter);
	if (filter == 0) {
		close(a[1]); close(b[0]);
		pid_t me = getpid();
		char buf[77];
		ssize_t r;
		while ((r = read(a[0], buf, sizeof buf)) != 0) {
			if (r < 0) {
				if (errno == EINTR) continue;
				_exit(5);
			}
			for (ssize_t off = 0; off < r;) {
				ssize_t w = write(b[1], buf + off, (size_t)(r - off));
				if (w < 0) { if (errno == EINTR) continue; _exit(5); }
				off += w;
			}
		}
		child_check(me, root, "filter");
		_exit(0);
	}
	pid_t consumer = fork();
	SETUP(consumer);
	if (consumer == 0) {
		close(a[0]); close(a[1]); close(b[1]);
		pid_t me = getpid();
		uint64_t expect = 0, v;
		size_t have = 0;
		unsigned char buf[8];
		for (;;) {
			ssize_t r = read(b[0], buf + have, 8 - have);
			if (r == 0) break;
			if (r < 0) { if (errno == EINTR) continue; _exit(5); }
			have += (size_t)r;
			if (have < 8) continue;
			have = 0;
			memcpy(&v, buf, 8);
			if (v != expect) {
				fprintf(stderr, "consumer: got %llu, expected %llu\n", (unsigned long long)v, (unsigned long long)expect);
				_exit(6);
			}
			expect++;
		}
		child_check(me, root, "consumer");
		put_count("consumed", expect);
		_exit(have == 0 ? 0 : 7);
	}
	close(a[0]); close(a[1]); close(b[0]); close(b[1]);
	usleep(200 * 1000);
	fprintf(stderr, "pipeline: producer %d filter %d consumer %d\n", producer, filter, consumer);
	signal_ready();
	wait_go();
	kill(producer, SIGUSR1);
	pid_t kids[3] = { producer, filter, consumer };
	const char *names[3] = { "producer", "filter", "consumer" };
	for (int i = 0; i < 3; i++) {
		int st;
		pid_t r = waitpid(kids[i], &st, 0);
		CHECK(r == kids[i], "waitpid(%s): %s", names[i], strerror(errno));
		CHECK(r != kids[i] || (WIFEXITED(st) && WEXITSTATUS(st) == 0), "%s ended with status %#x", names[i], st);
	}
	uint64_t produced = get_count("produced"), consumed = get_count("consumed");
	CHECK(produced == consumed && produced > 0, "produced %llu, consumed %llu", (unsigned long long)produced,
	      (unsigned long long)consumed);
	fprintf(stderr, "pipeline: %llu numbers streamed\n", (unsigned long long)consumed);
	finish();
}
