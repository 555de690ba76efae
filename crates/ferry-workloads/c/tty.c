/*
 * tty: terminals. Runs with fds 0-2 on a pseudo-terminal slave that is its controlling terminal
 * (started under `script -qfec`).
 *
 * tty W pty: the pty pair is inside the dumped tree (the tree is rooted at `script`, which holds
 *   the master). This process (the session leader) sets the terminal's termios (non-canonical,
 *   no echo, VMIN 5, VTIME 3, changed erase and kill characters) and window size, then forks a
 *   child C that makes its own process group the terminal's foreground group (like a shell's
 *   job). After restore both check isatty, /dev/tty, the terminal's session and foreground group,
 *   termios and window size, and write a line through the pty ("TTY-WRITE-OK"), which script
 *   copies to its output.
 *
 * tty W pty-unread: the same, but script's end-of-file (sent into the terminal because script's
 *   stdin is at EOF) is left unread (a NUL byte once the terminal is non-canonical): after
 *   restore the child (in the foreground) finds exactly that byte still queued and reads it.
 *
 * tty W job: a shell job. This process plays the interactive shell (the session leader, outside
 *   the dump); it forks J, which puts itself in its own group in the foreground, sets termios,
 *   and is what gets dumped with --shell-job. After `ferry restore --shell-job` (run on another
 *   terminal) J checks that fds 0-2 are a terminal, that it has a controlling terminal (/dev/tty
 *   opens, its session is the terminal's), that it is in its own group and that group is in the
 *   foreground, and that the terminal has J's termios again (a foreground job owns the terminal's
 *   settings). The window size is the new terminal's and is not checked. J writes "JOB-WRITE-OK".
 */
#include "common.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

static struct termios want;
static struct winsize want_ws = { .ws_row = 37, .ws_col = 123, .ws_xpixel = 11, .ws_ypixel = 22 };

static void set_termios(void)
{
	struct termios t;
	SETUP(tcgetattr(0, &t));
	t.c_lflag &= ~(ICANON | ECHO);
	t.c_iflag &= ~ICRNL;
	t.c_cc[VMIN] = 5;
	t.c_cc[VTIME] = 3;
	t.c_cc[VERASE] = 0x08;
	t.c_cc[VKILL] = 0x0b;
	SETUP(tcsetattr(0, TCSANOW, &t));
	SETUP(tcgetattr(0, &want));
}

static void check_termios(const char *who)
{
	struct termios t;
	if (tcgetattr(0, &t) < 0) {
		fail("%s: tcgetattr: %s", who, strerror(errno));
		return;
	}
	CHECK(t.c_iflag == want.c_iflag, "%s: c_iflag %#x, want %#x", who, t.c_iflag, want.c_iflag);
	CHECK(t.c_oflag == want.c_oflag, "%s: c_oflag %#x, want %#x", who, t.c_oflag, want.c_oflag);
	CHECK(t.c_cflag == want.c_cflag, "%s: c_cflag %#x, want %#x", who, t.c_cflag, want.c_cflag);
	CHECK(t.c_lflag == want.c_lflag, "%s: c_lflag %#x, want %#x", who, t.c_lflag, want.c_lflag);
	for (int i = 0; i < NCCS; i++)
		CHECK(t.c_cc[i] == want.c_cc[i], "%s: c_cc[%d] %d, want %d", who, i, t.c_cc[i], want.c_cc[i]);
}

static void check_winsize(const char *who)
{
	struct winsize ws;
	if (ioctl(0, TIOCGWINSZ, &ws) < 0) {
		fail("%s: TIOCGWINSZ: %s", who, strerror(errno));
		return;
	}
	CHECK(ws.ws_row == want_ws.ws_row && ws.ws_col == want_ws.ws_col && ws.ws_xpixel == want_ws.ws_xpixel &&
		      ws.ws_ypixel == want_ws.ws_ypixel,
	      "%s: window %dx%d (%dx%d px), want %dx%d (%dx%d px)", who, ws.ws_row, ws.ws_col, ws.ws_xpixel,
	      ws.ws_ypixel, want_ws.ws_row, want_ws.ws_col, want_ws.ws_xpixel, want_ws.ws_ypixel);
}

/* fds 0-2 are a terminal, which is the controlling terminal of our session. */
static void check_terminal(const char *who)
{
	for (int fd = 0; fd <= 2; fd++)
		CHECK(isatty(fd), "%s: fd %d is not a terminal", who, fd);
	int t = open("/dev/tty", O_RDWR | O_CLOEXEC);
	CHECK(t >= 0, "%s: no controlling terminal (open /dev/tty: %s)", who, strerror(errno));
	if (t >= 0)
		close(t);
	CHECK(tcgetsid(0) == getsid(0), "%s: the terminal's session is %d, ours %d", who, (int)tcgetsid(0),
	      (int)getsid(0));
}

static void block_ttou(void)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGTTOU);
	sigprocmask(SIG_BLOCK, &s, NULL);
}

static int keep_unread;

static int pty_child(pid_t sid)
{
	/* C: its own group, in the foreground */
	SETUP(setpgid(0, 0));
	block_ttou();
	SETUP(tcsetpgrp(0, getpid()));
	wait_go();
	check_terminal("child");
	CHECK(getsid(0) == sid, "child: session %d, want %d", (int)getsid(0), (int)sid);
	CHECK(getpgrp() == getpid(), "child: group %d, want its own %d", (int)getpgrp(), (int)getpid());
	CHECK(tcgetpgrp(0) == getpgrp(), "child: foreground group %d, want its group %d", (int)tcgetpgrp(0),
	      (int)getpgrp());
	check_termios("child");
	check_winsize("child");
	if (keep_unread) {
		int n = -1;
		char c = 1;
		ioctl(0, FIONREAD, &n);
		CHECK(n == 1, "child: %d bytes queued on the terminal, want script's end-of-file (1)", n);
		if (n == 1)
			CHECK(read(0, &c, 1) == 1 && c == 0, "child: the queued byte is %#x, not NUL", c);
	}
	if (failures)
		fprintf(stderr, "child: %s\n", first_failure);
	else
		printf("TTY-WRITE-OK child %d\n", (int)getpid());
	fflush(stdout);
	_exit(failures ? 1 : 0);
}

/*
 * script(1) with stdin at EOF passes the EOF on to the terminal (an end-of-file "line" in its
 * input). Consume it while still in canonical mode: ferry refuses a terminal with unread input.
 */
static void drain_eof(void)
{
	struct pollfd p = { .fd = 0, .events = POLLIN };
	char c;
	if (poll(&p, 1, 2000) == 1)
		(void)read(0, &c, 1);
}

static void pty_mode(int keep_input)
{
	pid_t sid = getsid(0);
	if (sid != getpid())
		die_setup("not a session leader (sid %d)", (int)sid);
	SETUP(tcgetsid(0) == sid ? 0 : -1);
	keep_unread = keep_input;
	if (!keep_input)
		drain_eof();
	else {
		/* wait (without reading) until script's end-of-file is in, while still canonical: it
		 * is then an end-of-file mark (read as a NUL byte once non-canonical); arriving after
		 * set_termios it would be a plain ^D byte */
		struct pollfd p = { .fd = 0, .events = POLLIN };
		if (poll(&p, 1, 2000) != 1)
			die_setup("script sent no end-of-file into the terminal");
	}
	set_termios();
	if (keep_input) {
		/* leave script's end-of-file in the input (a NUL byte once non-canonical) */
		int n = 0;
		for (int i = 0; i < 2000 && n == 0; i++) {
			SETUP(ioctl(0, FIONREAD, &n));
			if (n == 0)
				usleep(1000);
		}
		if (n == 0)
			die_setup("script sent no end-of-file into the terminal");
	}
	SETUP(ioctl(0, TIOCSWINSZ, &want_ws));
	pid_t c = fork();
	SETUP(c);
	if (c == 0)
		pty_child(sid);
	for (int i = 0; i < 2000 && tcgetpgrp(0) != c; i++)
		usleep(1000);
	SETUP(tcgetpgrp(0) == c ? 0 : -1);
	char buf[32];
	snprintf(buf, sizeof buf, "%d\n", (int)c);
	SETUP(write_file_atomic("child", buf));
	signal_ready();
	wait_go();
	check_terminal("leader");
	CHECK(getsid(0) == sid, "leader: session %d, want %d", (int)getsid(0), (int)sid);
	CHECK(tcgetpgrp(0) == c, "leader: foreground group %d, want the child's %d", (int)tcgetpgrp(0), (int)c);
	check_termios("leader");
	check_winsize("leader");
	kill(c, SIGUSR2);
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
	if (!failures)
		printf("TTY-WRITE-OK leader %d\n", (int)getpid());
	fflush(stdout);
	finish();
}

static void job_mode(void)
{
	pid_t j = fork();
	SETUP(j);
	if (j) {
		/* the "shell": waits for its job; 1 when it was killed (dumped) */
		int st;
		while (waitpid(j, &st, 0) < 0 && errno == EINTR)
			;
		_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	}
	SETUP(setpgid(0, 0));
	block_ttou();
	SETUP(tcsetpgrp(0, getpid()));
	set_termios();
	signal_ready();
	wait_go();
	check_terminal("job");
	CHECK(getsid(0) != getpid(), "job: became a session leader");
	CHECK(getpgrp() == getpid(), "job: group %d, want its own %d", (int)getpgrp(), (int)getpid());
	CHECK(tcgetpgrp(0) == getpgrp(), "job: foreground group %d, want its group %d", (int)tcgetpgrp(0),
	      (int)getpgrp());
	check_termios("job");
	if (!failures)
		printf("JOB-WRITE-OK %d\n", (int)getpid());
	fflush(stdout);
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (argc < 3)
		die_setup("usage: tty W pty|job");
	if (!isatty(0))
		die_setup("fd 0 is not a terminal (run under script)");
	if (strcmp(argv[2], "pty") == 0)
		pty_mode(0);
	else if (strcmp(argv[2], "pty-unread") == 0)
		pty_mode(1);
	else if (strcmp(argv[2], "job") == 0)
		job_mode();
	die_setup("unknown mode %s", argv[2]);
}
