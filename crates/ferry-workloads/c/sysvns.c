/*
 * sysvns: SysV objects of an ipc namespace of its own (the harness starts it with
 * `unshare --ipc`). Before ready it makes a semaphore set of 3 (values 7, 0, 32767, the most a semaphore holds), a
 * message queue holding three messages of types 1, 5, 2 (and a byte limit of 12345), a shared
 * memory segment nobody has attached (64 KiB of a pattern) and one it keeps attached, each with
 * its own key and mode; it raises kernel.msgmnb. With the argument "mqueue" it also makes two
 * POSIX message queues and closes them: /nsxq (at most 7 messages of 100 bytes, mode 0640, owner
 * 1234:5678) holding five messages of priorities 1, 5, 1, 3, 0 (two of 100 bytes, one empty),
 * and /nsxq2, empty, with the namespace's defaults. On go each must be there with the same id,
 * key, mode, values, messages (read in queue order) and content; the POSIX queues with their
 * attributes, owner, mode, and messages received in priority order.
 */
#include "common.h"
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <mqueue.h>
#include <sys/stat.h>

#define SEG 65536
union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};
struct msg {
	long mtype;
	char text[64];
};

static int shm_pattern(const unsigned char *p, int seed)
{
	for (int i = 0; i < SEG; i++)
		if (p[i] != (unsigned char)(i * 7 + seed))
			return i;
	return -1;
}

/* The messages of /nsxq, sent in this order; received: 1, 3, 0, 2, 4 (priority, then age). */
#define MQ_N 5
static const char *mq_body[MQ_N] = {
	"first of priority 1",
	"x", /* 100 bytes of 'x': see mq_len */
	"second of priority 1",
	"",
	"y",
};
static const unsigned mq_prio[MQ_N] = { 1, 5, 1, 3, 0 };
static const int mq_order[MQ_N] = { 1, 3, 0, 2, 4 };

static size_t mq_len(int i)
{
	return (i == 1 || i == 4) ? 100 : strlen(mq_body[i]);
}

static void mq_fill(int i, char *buf)
{
	if (i == 1 || i == 4)
		memset(buf, mq_body[i][0], 100);
	else
		memcpy(buf, mq_body[i], mq_len(i));
}

/* /nsxq and /nsxq2 as made before ready. */
static void mq_check(const struct mq_attr *dflt)
{
	mqd_t mq = mq_open("/nsxq", O_RDONLY | O_NONBLOCK);
	if (mq == (mqd_t)-1) {
		fail("mq_open /nsxq: %s", strerror(errno));
		return;
	}
	struct mq_attr a;
	struct stat st;
	if (mq_getattr(mq, &a) < 0 || fstat(mq, &st) < 0)
		fail("mq_getattr/fstat /nsxq: %s", strerror(errno));
	else {
		CHECK(a.mq_maxmsg == 7 && a.mq_msgsize == 100 && a.mq_curmsgs == MQ_N,
		      "/nsxq: maxmsg %ld msgsize %ld curmsgs %ld, not 7 100 %d", a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs,
		      MQ_N);
		CHECK((st.st_mode & 07777) == 0640 && st.st_uid == 1234 && st.st_gid == 5678, "/nsxq: mode %o owner %u:%u",
		      st.st_mode & 07777, st.st_uid, st.st_gid);
	}
	for (int k = 0; k < MQ_N; k++) {
		char got[128], want[128];
		unsigned prio = 99;
		int i = mq_order[k];
		ssize_t n = mq_receive(mq, got, sizeof got, &prio);
		if (n < 0) {
			fail("/nsxq message %d: %s", k, strerror(errno));
			break;
		}
		mq_fill(i, want);
		CHECK((size_t)n == mq_len(i) && prio == mq_prio[i] && memcmp(got, want, mq_len(i)) == 0,
		      "/nsxq message %d: %zd bytes, priority %u (want message %d: %zu bytes, priority %u)", k, n, prio, i,
		      mq_len(i), mq_prio[i]);
	}
	char extra[128];
	CHECK(mq_receive(mq, extra, sizeof extra, NULL) < 0 && errno == EAGAIN, "/nsxq holds more than %d messages",
	      MQ_N);
	mq_close(mq);
	mq = mq_open("/nsxq2", O_RDONLY);
	if (mq == (mqd_t)-1) {
		fail("mq_open /nsxq2: %s", strerror(errno));
		return;
	}
	if (mq_getattr(mq, &a) < 0 || fstat(mq, &st) < 0)
		fail("mq_getattr/fstat /nsxq2: %s", strerror(errno));
	else
		CHECK(a.mq_maxmsg == dflt->mq_maxmsg && a.mq_msgsize == dflt->mq_msgsize && a.mq_curmsgs == 0 &&
			      (st.st_mode & 07777) == 0600 && st.st_uid == 0,
		      "/nsxq2: maxmsg %ld msgsize %ld curmsgs %ld mode %o uid %u", a.mq_maxmsg, a.mq_msgsize,
		      a.mq_curmsgs, st.st_mode & 07777, st.st_uid);
	mq_close(mq);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int posix = argc > 2 && strcmp(argv[2], "mqueue") == 0;
	struct mq_attr dflt = { 0 };
	if (posix) {
		/* (closed after: an open one is refused as an fd; the queues stay in the namespace) */
		struct mq_attr a = { .mq_maxmsg = 7, .mq_msgsize = 100 };
		mqd_t mq = mq_open("/nsxq", O_CREAT | O_EXCL | O_RDWR, 0600, &a);
		if (mq == (mqd_t)-1)
			die_setup("mq_open /nsxq: %s", strerror(errno));
		SETUP(fchown(mq, 1234, 5678));
		SETUP(fchmod(mq, 0640));
		for (int i = 0; i < MQ_N; i++) {
			char body[128];
			mq_fill(i, body);
			SETUP(mq_send(mq, body, mq_len(i), mq_prio[i]));
		}
		mq_close(mq);
		mq = mq_open("/nsxq2", O_CREAT | O_EXCL | O_RDWR, 0600, NULL);
		if (mq == (mqd_t)-1)
			die_setup("mq_open /nsxq2: %s", strerror(errno));
		SETUP(mq_getattr(mq, &dflt));
		mq_close(mq);
	}
	FILE *f = fopen("/proc/sys/kernel/msgmnb", "w");
	if (!f || fprintf(f, "54321\n") < 0 || fclose(f) != 0)
		die_setup("cannot raise kernel.msgmnb");
	int sem = semget(0x5e3a0001, 3, IPC_CREAT | IPC_EXCL | 0640);
	SETUP(sem);
	unsigned short vals[3] = { 7, 0, 32767 };
	SETUP(semctl(sem, 0, SETALL, (union semun){ .array = vals }));
	int q = msgget(0x5e3a0002, IPC_CREAT | IPC_EXCL | 0604);
	SETUP(q);
	struct msqid_ds qd;
	SETUP(msgctl(q, IPC_STAT, &qd));
	qd.msg_qbytes = 12345;
	SETUP(msgctl(q, IPC_SET, &qd));
	long types[3] = { 1, 5, 2 };
	for (int i = 0; i < 3; i++) {
		struct msg m = { .mtype = types[i] };
		snprintf(m.text, sizeof m.text, "message %d of type %ld", i, types[i]);
		SETUP(msgsnd(q, &m, strlen(m.text) + 1, 0));
	}
	int loose = shmget(0x5e3a0003, SEG, IPC_CREAT | IPC_EXCL | 0660);
	SETUP(loose);
	unsigned char *p = shmat(loose, NULL, 0);
	if (p == (void *)-1)
		die_setup("shmat: %s", strerror(errno));
	for (int i = 0; i < SEG; i++)
		p[i] = (unsigned char)(i * 7 + 1);
	SETUP(shmdt(p));
	int held = shmget(IPC_PRIVATE, SEG, IPC_CREAT | 0600);
	SETUP(held);
	unsigned char *h = shmat(held, NULL, 0);
	if (h == (void *)-1)
		die_setup("shmat: %s", strerror(errno));
	for (int i = 0; i < SEG; i++)
		h[i] = (unsigned char)(i * 7 + 2);
	fprintf(stderr, "sem %d queue %d loose shm %d held shm %d\n", sem, q, loose, held);
	signal_ready();
	wait_go();

	f = fopen("/proc/sys/kernel/msgmnb", "r");
	int mnb = 0;
	CHECK(f && fscanf(f, "%d", &mnb) == 1 && mnb == 54321, "kernel.msgmnb is %d, not 54321", mnb);
	if (f)
		fclose(f);
	CHECK(semget(0x5e3a0001, 0, 0) == sem, "semaphore key 0x5e3a0001 gives id %d, not %d", semget(0x5e3a0001, 0, 0), sem);
	unsigned short now[3] = { 1, 1, 1 };
	if (semctl(sem, 0, GETALL, (union semun){ .array = now }) < 0)
		fail("semctl GETALL %d: %s", sem, strerror(errno));
	else
		CHECK(now[0] == 7 && now[1] == 0 && now[2] == 32767, "semaphores %u %u %u, not 7 0 32767", now[0], now[1], now[2]);
	struct semid_ds sd;
	union semun su = { .buf = &sd };
	if (semctl(sem, 0, IPC_STAT, su) == 0)
		CHECK((sd.sem_perm.mode & 0777) == 0640 && sd.sem_nsems == 3, "semaphore set mode %o nsems %lu",
		      sd.sem_perm.mode & 0777, (unsigned long)sd.sem_nsems);
	CHECK(msgget(0x5e3a0002, 0) == q, "queue key 0x5e3a0002 gives id %d, not %d", msgget(0x5e3a0002, 0), q);
	if (msgctl(q, IPC_STAT, &qd) == 0)
		CHECK((qd.msg_perm.mode & 0777) == 0604 && qd.msg_qbytes == 12345 && qd.msg_qnum == 3,
		      "queue mode %o qbytes %lu qnum %lu", qd.msg_perm.mode & 0777, (unsigned long)qd.msg_qbytes,
		      (unsigned long)qd.msg_qnum);
	for (int i = 0; i < 3; i++) {
		struct msg m;
		char want[64];
		snprintf(want, sizeof want, "message %d of type %ld", i, types[i]);
		ssize_t n = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
		if (n < 0) {
			fail("message %d: %s", i, strerror(errno));
			break;
		}
		CHECK(m.mtype == types[i] && strcmp(m.text, want) == 0, "message %d: type %ld %.64s", i, m.mtype, m.text);
	}
	CHECK(shmget(0x5e3a0003, 0, 0) == loose, "segment key 0x5e3a0003 gives id %d, not %d", shmget(0x5e3a0003, 0, 0), loose);
	p = shmat(loose, NULL, SHM_RDONLY);
	if (p == (void *)-1)
		fail("shmat %d: %s", loose, strerror(errno));
	else {
		int bad = shm_pattern(p, 1);
		CHECK(bad < 0, "unattached segment %d differs at byte %d", loose, bad);
		struct shmid_ds d;
		if (shmctl(loose, IPC_STAT, &d) == 0)
			CHECK((d.shm_perm.mode & 0777) == 0660, "segment mode %o", d.shm_perm.mode & 0777);
	}
	int bad = shm_pattern(h, 2);
	CHECK(bad < 0, "attached segment %d differs at byte %d", held, bad);
	/* the segment behind the mapping is still the one with id `held` */
	h[0] = 0x5a;
	unsigned char *h2 = shmat(held, NULL, SHM_RDONLY);
	CHECK(h2 != (void *)-1 && h2[0] == 0x5a, "segment %d is not the one mapped", held);
	if (posix)
		mq_check(&dflt);
	finish();
}
