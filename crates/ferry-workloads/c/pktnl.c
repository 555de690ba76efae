/*
 * pktnl MODE: packet and netlink sockets.
 *   packet:  P1 (SOCK_RAW, ethertype E = 0xa000 + pid % 4096, bound to lo, PACKET_AUXDATA and
 *            PACKET_IGNORE_OUTGOING on, member of multicast 01:00:5e:7f:P:P on lo) and P2
 *            (SOCK_DGRAM, no protocol, SO_RCVBUF 64 KiB). After go: P1 is bound to E on lo,
 *            its options are set, lo lists its multicast address in /proc/net/dev_mcast, P2's
 *            buffer is as set, and a frame P2 sends to E on lo reaches P1 with its payload.
 *   netlink: N1 (NETLINK_ROUTE, autobound, groups 26 and 33 joined, NETLINK_EXT_ACK on,
 *            SO_RCVBUF 96 KiB); N2 (NETLINK_USERSOCK bound to port 0x7e000000 + pid) and N3
 *            (NETLINK_USERSOCK, connected to N2, autobound). After go: every port id, group,
 *            option and peer is as before, N1 answers an RTM_GETLINK dump, and N3's message
 *            reaches N2 from N3's port.
 *   ring:    a packet socket with a PACKET_RX_RING (no protocol: nothing arrives): dump must
 *            refuse it; after go the ring is still there (PACKET_VERSION cannot change: EBUSY).
 *   fanout:  a packet socket bound to an unused ethertype on lo, in a fanout group: dump must
 *            refuse it; after go it is still in the group (PACKET_FANOUT reads it back).
 *   audit:   a NETLINK_AUDIT socket: dump must refuse it; after go it is still one.
 */
#include "common.h"
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

static int geti(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(fd, level, name, &v, &l) < 0)
		return -1000 - errno;
	return v;
}

static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Whether /proc/net/dev_mcast lists `hex` on lo. */
static int lo_has_mcast(const char *hex)
{
	FILE *f = fopen("/proc/net/dev_mcast", "r");
	if (!f)
		return 0;
	char line[256], dev[64], addr[64];
	int idx, users, global, found = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%d %63s %d %d %63s", &idx, dev, &users, &global, addr) == 5 && strcmp(dev, "lo") == 0 &&
		    strcmp(addr, hex) == 0)
			found = 1;
	fclose(f);
	return found;
}

static void mode_packet(void)
{
	int lo = (int)if_nametoindex("lo");
	if (lo <= 0)
		die_setup("no lo");
	uint16_t eth = (uint16_t)(0xa000 + getpid() % 4096);
	int p1 = socket(AF_PACKET, SOCK_RAW, htons(eth));
	SETUP(p1);
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(eth), .sll_ifindex = lo };
	SETUP(bind(p1, (struct sockaddr *)&ll, sizeof ll));
	int one = 1;
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one));
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one));
	unsigned char mc[6] = { 0x01, 0x00, 0x5e, 0x7f, (unsigned char)(getpid() >> 8), (unsigned char)getpid() };
	struct packet_mreq mr = { .mr_ifindex = lo, .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6 };
	memcpy(mr.mr_address, mc, 6);
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr));
	char hex[16];
	snprintf(hex, sizeof hex, "%02x%02x%02x%02x%02x%02x", mc[0], mc[1], mc[2], mc[3], mc[4], mc[5]);
	if (!lo_has_mcast(hex))
		die_setup("lo does not list %s after PACKET_ADD_MEMBERSHIP", hex);
	int p2 = socket(AF_PACKET, SOCK_DGRAM, 0);
	SETUP(p2);
	int buf = 64 * 1024;
	SETUP(setsockopt(p2, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf));
	int rcvbuf = geti(p2, SOL_SOCKET, SO_RCVBUF);

	signal_ready();
	wait_go();

	struct sockaddr_ll got;
	socklen_t len = sizeof got;
	CHECK(getsockname(p1, (struct sockaddr *)&got, &len) == 0 && got.sll_ifindex == lo &&
		      got.sll_protocol == htons(eth),
	      "P1: bound to ifindex %d protocol %#x, want %d %#x", got.sll_ifindex, ntohs(got.sll_protocol), lo, eth);
	CHECK(geti(p1, SOL_SOCKET, SO_TYPE) == SOCK_RAW, "P1: not SOCK_RAW");
	CHECK(geti(p1, SOL_PACKET, PACKET_AUXDATA) == 1, "P1: PACKET_AUXDATA lost");
	CHECK(geti(p1, SOL_PACKET, PACKET_IGNORE_OUTGOING) == 1, "P1: PACKET_IGNORE_OUTGOING lost");
	CHECK(lo_has_mcast(hex), "P1: lo no longer lists the multicast address %s", hex);
	CHECK(geti(p2, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM, "P2: not SOCK_DGRAM");
	CHECK(geti(p2, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "P2: SO_RCVBUF %d, want %d", geti(p2, SOL_SOCKET, SO_RCVBUF),
	      rcvbuf);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(eth), .sll_ifindex = lo, .sll_halen = 6 };
	CHECK(sendto(p2, "ferry-frame", 11, 0, (struct sockaddr *)&to, sizeof to) == 11, "P2: sendto: %s",
	      strerror(errno));
	int seen = 0;
	for (int i = 0; i < 20 && !seen; i++) {
		if (!readable(p1, 100))
			continue;
		unsigned char frame[256];
		ssize_t n = recv(p1, frame, sizeof frame, MSG_DONTWAIT);
		if (n >= 14 + 11 && memcmp(frame + 14, "ferry-frame", 11) == 0)
			seen = 1;
	}
	CHECK(seen, "P1: the frame sent to its ethertype on lo did not arrive");
	finish();
}

static uint32_t nl_port(int fd, int peer)
{
	struct sockaddr_nl a;
	socklen_t len = sizeof a;
	memset(&a, 0, sizeof a);
	if ((peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len)) < 0)
		return 0;
	return a.nl_pid;
}

/* The membership words of fd (2 words: groups 1-64). */
static void memberships(int fd, uint32_t w[2])
{
	w[0] = w[1] = 0;
	socklen_t len = 2 * sizeof(uint32_t);
	getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, w, &len);
}

static void mode_netlink(void)
{
	int n1 = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	SETUP(n1);
	struct sockaddr_nl a = { .nl_family = AF_NETLINK };
	SETUP(bind(n1, (struct sockaddr *)&a, sizeof a));
	int g = 26;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g));
	g = 33;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g));
	int one = 1;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one));
	int buf = 96 * 1024;
	SETUP(setsockopt(n1, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf));
	int rcvbuf = geti(n1, SOL_SOCKET, SO_RCVBUF);
	uint32_t port1 = nl_port(n1, 0), groups[2];
	memberships(n1, groups);

	int n2 = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_USERSOCK);
	SETUP(n2);
	uint32_t port2 = 0x7e000000U + (uint32_t)getpid();
	struct sockaddr_nl a2 = { .nl_family = AF_NETLINK, .nl_pid = port2 };
	SETUP(bind(n2, (struct sockaddr *)&a2, sizeof a2));
	int n3 = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_USERSOCK);
	SETUP(n3);
	SETUP(connect(n3, (struct sockaddr *)&a2, sizeof a2));
	uint32_t port3 = nl_port(n3, 0);
	if (port3 == 0)
		die_setup("N3 was not autobound");

	signal_ready();
	wait_go();

	CHECK(nl_port(n1, 0) == port1, "N1: port %u, want %u", nl_port(n1, 0), port1);
	uint32_t now[2];
	memberships(n1, now);
	CHECK(now[0] == groups[0] && now[1] == groups[1] && (groups[0] & (1U << 25)) && (groups[1] & 1U),
	      "N1: groups %#x %#x, want %#x %#x", now[0], now[1], groups[0], groups[1]);
	CHECK(geti(n1, SOL_NETLINK, NETLINK_EXT_ACK) == 1, "N1: NETLINK_EXT_ACK lost");
	CHECK(geti(n1, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "N1: SO_RCVBUF %d, want %d", geti(n1, SOL_SOCKET, SO_RCVBUF),
	      rcvbuf);
	CHECK(geti(n1, SOL_SOCKET, SO_PROTOCOL) == NETLINK_ROUTE, "N1: protocol changed");
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = { .h = { .nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP,
			 .nlmsg_seq = 7 },
		  .i = { .ifi_family = AF_UNSPEC } };
	CHECK(send(n1, &req, sizeof req, 0) == (ssize_t)sizeof req, "N1: send: %s", strerror(errno));
	int answered = 0;
	while (!answered && readable(n1, 2000)) {
		char b[16384];
		ssize_t n = recv(n1, b, sizeof b, 0);
		if (n < (ssize_t)sizeof(struct nlmsghdr))
			break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)b; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n))
			if (h->nlmsg_seq == 7 && h->nlmsg_type == RTM_NEWLINK && h->nlmsg_pid == port1)
				answered = 1;
	}
	CHECK(answered, "N1: no RTM_NEWLINK answer to its dump request");
	CHECK(nl_port(n2, 0) == port2, "N2: port %u, want %u", nl_port(n2, 0), port2);
	CHECK(nl_port(n3, 0) == port3, "N3: port %u, want %u", nl_port(n3, 0), port3);
	CHECK(nl_port(n3, 1) == port2, "N3: connected to %u, want %u", nl_port(n3, 1), port2);
	CHECK(send(n3, "hello", 5, 0) == 5, "N3: send: %s", strerror(errno));
	struct sockaddr_nl from;
	socklen_t fl = sizeof from;
	char got[8] = { 0 };
	ssize_t n = readable(n2, 2000) ? recvfrom(n2, got, sizeof got, 0, (struct sockaddr *)&from, &fl) : -1;
	CHECK(n == 5 && memcmp(got, "hello", 5) == 0 && from.nl_pid == port3, "N2: got %zd bytes from port %u", n,
	      n >= 0 ? from.nl_pid : 0);
	finish();
}

static void mode_refused(const char *mode)
{
	int fd = -1, want = 0;
	if (strcmp(mode, "ring") == 0) {
		fd = socket(AF_PACKET, SOCK_RAW, 0);
		SETUP(fd);
		struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2 };
		SETUP(setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req));
	} else if (strcmp(mode, "fanout") == 0) {
		uint16_t eth = (uint16_t)(0xb000 + getpid() % 4096);
		fd = socket(AF_PACKET, SOCK_RAW, htons(eth));
		SETUP(fd);
		struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(eth),
					  .sll_ifindex = (int)if_nametoindex("lo") };
		SETUP(bind(fd, (struct sockaddr *)&ll, sizeof ll));
		want = (getpid() & 0xffff) | (PACKET_FANOUT_HASH << 16);
		SETUP(setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &want, sizeof want));
	} else {
		fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT);
		SETUP(fd);
	}
	signal_ready();
	wait_go();
	if (strcmp(mode, "ring") == 0) {
		int v = TPACKET_V2;
		CHECK(setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0 && errno == EBUSY,
		      "the ring is gone (PACKET_VERSION could change: %s)", strerror(errno));
	} else if (strcmp(mode, "fanout") == 0) {
		CHECK(geti(fd, SOL_PACKET, PACKET_FANOUT) == want, "not in its fanout group any more (%#x, want %#x)",
		      geti(fd, SOL_PACKET, PACKET_FANOUT), want);
	} else {
		CHECK(geti(fd, SOL_SOCKET, SO_PROTOCOL) == NETLINK_AUDIT, "not a NETLINK_AUDIT socket");
	}
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "packet";
	if (strcmp(mode, "ring") == 0 || strcmp(mode, "fanout") == 0 || strcmp(mode, "audit") == 0)
		mode_refused(mode);
	if (strcmp(mode, "packet") == 0)
		mode_packet();
	if (strcmp(mode, "netlink") == 0)
		mode_netlink();
	die_setup("unknown mode %s", mode);
}
