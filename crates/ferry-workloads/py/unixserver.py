"""unixserver: python3 serving on a unix socket, checkpointed while blocked in accept().

Usage: unixserver.py WORKDIR. Creates a socketpair with "queued-before" in flight and a stream
listener at WORKDIR/py.sock, writes WORKDIR/ready, and blocks in accept(). After restore the test
connects and sends "hello"; the server answers "hello back" (so the accept() restarted on the
restored listener). On SIGUSR2 it checks that the socketpair still holds exactly
"queued-before", writes WORKDIR/result ("PASS" or "FAIL: ...") and exits 0 on pass, 1 on fail.
"""
import os
import signal
import socket
import sys
import time

# Own all of our state: drop fds inherited by accident (e.g. a test runner's jobserver pipe).
os.closerange(3, 65536)

work = sys.argv[1]
go = False


def on_go(signum, frame):
    global go
    go = True


def write_atomic(name, text):
    tmp = os.path.join(work, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(work, name))


signal.signal(signal.SIGUSR2, on_go)
a, b = socket.socketpair()
a.sendall(b"queued-before")
path = os.path.join(work, "py.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(4)
write_atomic("ready", "%d\n" % os.getpid())
conn, _ = listener.accept()
data = conn.recv(100)
conn.sendall(data + b" back")
while not go:
    time.sleep(0.01)
failure = None
if data != b"hello":
    failure = "the client sent %r" % data
else:
    b.setblocking(False)
    got = b.recv(100)
    if got != b"queued-before":
        failure = "the socketpair holds %r" % got
    elif conn.getsockname() != path:
        failure = "the accepted socket is named %r" % conn.getsockname()
write_atomic("result", "PASS\n" if failure is None else "FAIL: %s\n" % failure)
sys.exit(0 if failure is None else 1)
