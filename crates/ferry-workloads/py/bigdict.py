"""bigdict: a real interpreter with a large heap, checkpointed mid-loop.

Usage: bigdict.py WORKDIR [ENTRIES]. Builds a dict of ENTRIES (default 1,000,000) int -> str
entries, records a checksum, writes WORKDIR/ready, then loops mutating a counter (sleeping a
little now and then) until SIGUSR2. On SIGUSR2 it recomputes the checksum and checks every entry,
writes WORKDIR/result ("PASS" or "FAIL: ...") and exits 0 on pass, 1 on fail.
"""
import os
import signal
import sys
import time
import zlib

# Own all of our state: drop fds inherited by accident (e.g. a test runner's jobserver pipe),
# which would be shared with processes outside the dump.
os.closerange(3, 65536)

work = sys.argv[1]
entries = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000


def write_atomic(name, text):
    tmp = os.path.join(work, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(work, name))


def value(k):
    return "v%x-%d" % (k * 2654435761 % 4294967296, k)


def checksum(d):
    c = 0
    for k, v in d.items():
        c = zlib.crc32(v.encode(), c ^ (k & 0xFFFFFFFF))
    return c


go = False


def on_go(signum, frame):
    global go
    go = True


signal.signal(signal.SIGUSR2, on_go)
sys.stderr.write("bigdict: pid %d building %d entries\n" % (os.getpid(), entries))
sys.stderr.flush()
d = {k: value(k) for k in range(entries)}
before = checksum(d)
counter = 0
sys.stderr.write("bigdict: %d entries, checksum %#x\n" % (len(d), before))
sys.stderr.flush()
write_atomic("ready", "%d\n" % os.getpid())

while not go:
    counter += 1
    if counter % 100_000 == 0:
        time.sleep(0.005)

failures = []
if len(d) != entries:
    failures.append("dict has %d entries, had %d" % (len(d), entries))
after = checksum(d)
if after != before:
    failures.append("dict checksum %#x, was %#x" % (after, before))
bad = next((k for k in range(entries) if d.get(k) != value(k)), None)
if bad is not None:
    failures.append("entry %d is %r, expected %r" % (bad, d.get(bad), value(bad)))
if counter <= 0:
    failures.append("the counter did not advance")
sys.stderr.write("bigdict: counter %d after %d entries checked\n" % (counter, entries))
result = "PASS\n" if not failures else "FAIL: " + "; ".join(failures) + "\n"
sys.stderr.write("result: " + result)
write_atomic("result", result)
sys.exit(0 if not failures else 1)
