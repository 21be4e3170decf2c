#!/usr/bin/env python3
"""A transport for fault tests: runs CMD and relays our stdin to its stdin
(at most RATE bytes a second, with the byte at each FLIP offset inverted)
and its stdout to ours. Killing this process is the link dying: CMD sees
its stdin close, as the far side of a killed ssh does.

    pipe.py [--rate BYTES] [--flip OFFSET]... [--count FILE] -- CMD [ARGS...]

--count FILE: the bytes relayed so far to CMD, rewritten as they pass.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

CHUNK = 64 * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--flip", type=int, action="append", default=[])
    ap.add_argument("--count")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def down():
        while True:
            b = child.stdout.read(CHUNK)
            if not b:
                break
            os.write(1, b)
        os.close(1)

    threading.Thread(target=down, daemon=True).start()
    flips = sorted(a.flip)
    sent = 0
    start = time.monotonic()
    while True:
        b = os.read(0, CHUNK)
        if not b:
            break
        b = bytearray(b)
        for f in flips:
            if sent <= f < sent + len(b):
                b[f - sent] ^= 0xFF
        if a.rate:
            due = start + (sent + len(b)) / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        try:
            child.stdin.write(b)
        except BrokenPipeError:
            break
        sent += len(b)
        if a.count:
            tmp = a.count + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(sent))
            os.replace(tmp, a.count)
    child.stdin.close()
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
