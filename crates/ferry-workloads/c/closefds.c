/*
 * closefds: run a real program with every fd above 2 closed (a test runner leaks its own
 * pipes, which would be shared with a process outside the dump). Usage: closefds PROG ARGS...
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: closefds PROG ARGS...\n");
		return 2;
	}
	syscall(SYS_close_range, 3, ~0U, 0);
	execvp(argv[1], argv + 1);
	perror("execvp");
	return 127;
}
