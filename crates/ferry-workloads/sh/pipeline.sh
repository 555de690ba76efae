#!/bin/sh
# A real shell pipeline for ferry's tests: python3 producer | cat | python3 consumer.
# Usage: pipeline.sh WORKDIR. The producer prints 0, 1, 2 ... (one line each, about a thousand a
# second) and records its pid in W/producer.pid; the consumer checks that every line is the
# previous one + 1, writes W/ready after 200 lines, and at EOF writes W/result ("PASS" or
# "FAIL: ...") and exits 0/1. The harness ends the stream by killing the producer (SIGTERM);
# the shell exits with the consumer's status.
W=$1
python3 -u -c '
import itertools, os, sys, time
open(sys.argv[1] + "/producer.pid", "w").write(str(os.getpid()))
for i in itertools.count():
    print(i)
    if i % 10 == 0:
        time.sleep(0.01)
' "$W" | cat | python3 -c '
import os, sys
w = sys.argv[1]
def put(name, text):
    with open(w + "/" + name + ".tmp", "w") as f:
        f.write(text)
    os.replace(w + "/" + name + ".tmp", w + "/" + name)
expect, bad = 0, None
for line in sys.stdin:
    v = int(line)
    if v != expect and bad is None:
        bad = "got %d, expected %d" % (v, expect)
    expect = v + 1
    if expect == 200:
        put("ready", "%d\n" % os.getppid())
put("result", "PASS\n" if bad is None and expect > 200 else "FAIL: %s (%d lines)\n" % (bad, expect))
sys.stderr.write("consumer: %d lines\n" % expect)
sys.exit(0 if bad is None else 1)
' "$W"
