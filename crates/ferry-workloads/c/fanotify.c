/*
 * fanotify MODE: a fanotify group (FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, events opened
 * O_RDONLY | O_LARGEFILE) with an inode mark on W/watched (FAN_MODIFY | FAN_CLOSE_WRITE,
 * ignored FAN_ACCESS surviving modification), a mount mark on W's mount and a filesystem mark
 * on W's filesystem (both with an ignored mask only, surviving modification, so that no one
 * else's activity queues or clears anything).
 *   notif:   after go: every "fanotify" line of the group's fdinfo is as it was before ready
 *            (flags, event flags, each mark's flags, masks and identity), the fd is still
 *            non-blocking, and a write to W/watched queues FAN_MODIFY and FAN_CLOSE_WRITE
 *            events whose fd is that file, and nothing else.
 *   unread:  as notif, with one event left unread at the checkpoint: dump must refuse it;
 *            after go the event is still there.
 *   perm:    a FAN_CLASS_CONTENT group with a FAN_OPEN_PERM mark on W/watched: dump must
 *            refuse it; after go the mark is still there (fdinfo unchanged).
 */
#include "common.h"
#include <sys/fanotify.h>
#include <poll.h>

static char watched[4096];

/* The "fanotify" lines of fd's fdinfo, concatenated. */
static void fan_lines(int fd, char *out, size_t cap)
{
	char path[64], line[1024];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	out[0] = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, "fanotify ", 9) == 0 && strlen(out) + strlen(line) < cap)
			strcat(out, line);
	fclose(f);
}

static void touch(void)
{
	int w = open(watched, O_WRONLY | O_APPEND);
	if (w < 0 || write(w, "x", 1) != 1)
		fail("cannot write %s: %s", watched, strerror(errno));
	if (w >= 0)
		close(w);
}

/* Read every event that comes within `ms` (then 200 ms after each): the union of the masks
 * of those on W/watched; *others counts events on other files. */
static uint64_t read_events(int fan, int ms, int *others)
{
	uint64_t mask = 0;
	*others = 0;
	struct pollfd p = { .fd = fan, .events = POLLIN };
	while (poll(&p, 1, ms) == 1) {
		ms = 200;
		char buf[4096];
		ssize_t n = read(fan, buf, sizeof buf);
		if (n <= 0)
			break;
		for (struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf; FAN_EVENT_OK(m, n);
		     m = FAN_EVENT_NEXT(m, n)) {
			int is_watched = 0;
			if (m->fd >= 0) {
				char l[64], target[4096];
				snprintf(l, sizeof l, "/proc/self/fd/%d", m->fd);
				ssize_t t = readlink(l, target, sizeof target - 1);
				if (t > 0) {
					target[t] = 0;
					is_watched = strcmp(target, watched) == 0;
				}
				close(m->fd);
			}
			if (is_watched)
				mask |= m->mask;
			else
				(*others)++;
		}
	}
	return mask;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "notif";
	snprintf(watched, sizeof watched, "%s/watched", W);
	int w = open(watched, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	SETUP(w);
	close(w);
	static char before[8192], after[8192];

	if (strcmp(mode, "perm") == 0) {
		int fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY);
		SETUP(fan);
		SETUP(fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, watched));
		fan_lines(fan, before, sizeof before);
		signal_ready();
		wait_go();
		fan_lines(fan, after, sizeof after);
		CHECK(strcmp(before, after) == 0, "the permission group changed:\n%s---\n%s", before, after);
		finish();
	}

	int fan = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	SETUP(fan);
	SETUP(fanotify_mark(fan, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, watched));
	SETUP(fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_ACCESS,
			    AT_FDCWD, watched));
	SETUP(fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, W));
	SETUP(fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
			    FAN_CLOSE_NOWRITE, AT_FDCWD,
			    W));
	fan_lines(fan, before, sizeof before);
	if (strstr(before, "mnt_id:") == NULL || strstr(before, "fanotify sdev:") == NULL)
		die_setup("fdinfo lacks the mount or filesystem mark:\n%s", before);
	if (strcmp(mode, "unread") == 0)
		touch();

	signal_ready();
	wait_go();

	fan_lines(fan, after, sizeof after);
	CHECK(strcmp(before, after) == 0, "the group's fdinfo changed:\n%s---\n%s", before, after);
	CHECK(fcntl(fan, F_GETFL) & O_NONBLOCK, "the fd is no longer non-blocking");
	int others = 0;
	uint64_t mask;
	if (strcmp(mode, "unread") == 0) {
		mask = read_events(fan, 2000, &others);
		CHECK((mask & FAN_MODIFY) && (mask & FAN_CLOSE_WRITE), "the unread events are gone (mask %#llx)",
		      (unsigned long long)mask);
	}
	touch();
	mask = read_events(fan, 2000, &others);
	CHECK((mask & FAN_MODIFY) && (mask & FAN_CLOSE_WRITE),
	      "no FAN_MODIFY and FAN_CLOSE_WRITE events for %s after the write (mask %#llx)", watched,
	      (unsigned long long)mask);
	CHECK(others == 0, "%d events on other files", others);
	finish();
}
