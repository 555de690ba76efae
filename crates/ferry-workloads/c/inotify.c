/*
 * inotify: an instance (O_NONBLOCK) with watches whose numbers are not 1, 2, 3 (watches were
 * added and removed before), different masks, a watch on a directory and on files; a second,
 * blocking instance with one watch. After restore: the same flags, the same wd -> mask table
 * (read back from /proc/self/fdinfo), no queued event, and new events on the watched files are
 * delivered with the old wd numbers.
 *
 * argv[2] == "pending": leave one event unread (the dump must refuse it).
 */
#include "common.h"
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>

/* "wd mask" pairs of fd's watches from /proc/self/fdinfo, sorted by wd, into out. */
static void watch_table(int fd, char *out, size_t cap)
{
	char path[64], buf[8192];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	out[0] = 0;
	if (read_file(path, buf, sizeof buf) < 0)
		return;
	int wds[64], n = 0;
	unsigned masks[64];
	for (char *l = strstr(buf, "inotify wd:"); l && n < 64; l = strstr(l + 1, "inotify wd:")) {
		char *m = strstr(l, "mask:");
		wds[n] = atoi(l + 11);
		masks[n] = m ? (unsigned)strtoul(m + 5, NULL, 16) : 0;
		n++;
	}
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (wds[j] < wds[i]) {
				int t = wds[i];
				unsigned u = masks[i];
				wds[i] = wds[j], masks[i] = masks[j];
				wds[j] = t, masks[j] = u;
			}
	size_t off = 0;
	for (int i = 0; i < n; i++)
		off += (size_t)snprintf(out + off, cap - off, "%d:%x ", wds[i], masks[i]);
}

static void drain(int fd)
{
	char b[4096];
	while (read(fd, b, sizeof b) > 0)
		;
}

/* Wait up to 5 s for one event on fd; check its wd, mask bit and name. */
static void expect_event(int fd, int wd, uint32_t bit, const char *name, const char *what)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 5000) != 1) {
		fail("%s: no event", what);
		return;
	}
	char b[4096] __attribute__((aligned(8)));
	ssize_t n = read(fd, b, sizeof b);
	if (n < (ssize_t)sizeof(struct inotify_event)) {
		fail("%s: read %zd", what, n);
		return;
	}
	struct inotify_event *e = (struct inotify_event *)b;
	CHECK(e->wd == wd, "%s: event for wd %d, want %d", what, e->wd, wd);
	CHECK(e->mask & bit, "%s: mask %#x lacks %#x", what, e->mask, bit);
	if (name)
		CHECK(e->len > 0 && strcmp(e->name, name) == 0, "%s: name %s, want %s", what, e->len ? e->name : "",
		      name);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int pending = argc > 2 && strcmp(argv[2], "pending") == 0;
	char dir[2048], fa[4096], fb[4096];
	snprintf(dir, sizeof dir, "%s/watched", W);
	snprintf(fa, sizeof fa, "%s/a", dir);
	snprintf(fb, sizeof fb, "%s/b", W);
	SETUP(mkdir(dir, 0700));
	int t = open(fa, O_CREAT | O_WRONLY, 0600);
	SETUP(t);
	close(t);
	t = open(fb, O_CREAT | O_WRONLY, 0600);
	SETUP(t);
	close(t);

	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	SETUP(in);
	/* burn wds 1..4 so the ones kept are 5, 7, 8 */
	for (int i = 0; i < 4; i++) {
		int w = inotify_add_watch(in, fb, IN_ACCESS);
		SETUP(w);
		SETUP(inotify_rm_watch(in, w));
	}
	int wd_dir = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE | IN_ONLYDIR);
	SETUP(wd_dir);
	int tmp = inotify_add_watch(in, fb, IN_OPEN);
	SETUP(tmp);
	SETUP(inotify_rm_watch(in, tmp));
	int wd_b = inotify_add_watch(in, fb, IN_MODIFY | IN_CLOSE_WRITE | IN_EXCL_UNLINK);
	SETUP(wd_b);
	int wd_a = inotify_add_watch(in, fa, IN_ATTRIB);
	SETUP(wd_a);
	drain(in);
	int in2 = inotify_init1(0);
	SETUP(in2);
	int wd2 = inotify_add_watch(in2, fa, IN_MODIFY);
	SETUP(wd2);
	if (pending) {
		t = open(fb, O_WRONLY);
		SETUP(t);
		SETUP(write(t, "x", 1));
		close(t);
	}
	char table[1024], table2[256];
	watch_table(in, table, sizeof table);
	watch_table(in2, table2, sizeof table2);
	fprintf(stderr, "watches: %s| %s (wds %d %d %d)\n", table, table2, wd_dir, wd_b, wd_a);
	signal_ready();
	wait_go();

	if (pending) /* the refused dump must have left the event where it was */
		expect_event(in, wd_b, IN_MODIFY, NULL, "the event pending across the refused dump");
	drain(in);
	char now[1024], now2[256];
	watch_table(in, now, sizeof now);
	watch_table(in2, now2, sizeof now2);
	CHECK(strcmp(now, table) == 0, "watches are %s, were %s", now, table);
	CHECK(strcmp(now2, table2) == 0, "second instance watches are %s, were %s", now2, table2);
	CHECK((fcntl(in, F_GETFL) & O_NONBLOCK) != 0, "first instance lost O_NONBLOCK");
	CHECK((fcntl(in2, F_GETFL) & O_NONBLOCK) == 0, "second instance became non-blocking");
	CHECK((fcntl(in, F_GETFD) & FD_CLOEXEC) != 0, "first instance lost FD_CLOEXEC");
	int q = -1;
	CHECK(ioctl(in, FIONREAD, &q) == 0 && q == 0, "%d bytes of events queued after restore", q);
	CHECK(ioctl(in2, FIONREAD, &q) == 0 && q == 0, "%d bytes queued on the second instance", q);

	char fc[4096];
	snprintf(fc, sizeof fc, "%s/new", dir);
	t = open(fc, O_CREAT | O_WRONLY, 0600);
	CHECK(t >= 0, "create %s: %s", fc, strerror(errno));
	close(t);
	expect_event(in, wd_dir, IN_CREATE, "new", "create in the watched directory");
	drain(in);
	t = open(fb, O_WRONLY | O_APPEND);
	CHECK(t >= 0 && write(t, "y", 1) == 1, "write %s", fb);
	expect_event(in, wd_b, IN_MODIFY, NULL, "modify of the watched file");
	close(t);
	drain(in);
	CHECK(chmod(fa, 0640) == 0, "chmod");
	expect_event(in, wd_a, IN_ATTRIB, NULL, "chmod of the watched file");
	t = open(fa, O_WRONLY);
	CHECK(t >= 0 && write(t, "z", 1) == 1, "write %s", fa);
	close(t);
	expect_event(in2, wd2, IN_MODIFY, NULL, "modify seen by the second instance");
	finish();
}
