#!/usr/bin/env python3
"""An ssh ProxyCommand that adds one-way latency in user space.

    ProxyCommand python3 bench/delay.py MS %h %p

This kernel has no netem, so the benchmark delays every chunk by MS
milliseconds in each direction here, and shapes the rate with tbf on the
link. Order is kept; throughput is not limited by the delay (chunks are
queued with their due time, not sent one round trip at a time).
"""
import os
import queue
import socket
import sys
import threading
import time


def pump(read, write, finish, delay):
    """Read chunks, hand each on `delay` seconds after it arrived."""
    q = queue.Queue()

    def reader():
        while True:
            try:
                data = read()
            except OSError:
                data = b""
            q.put((time.monotonic() + delay, data))
            if not data:
                return

    def writer():
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                finish()
                return
            try:
                write(data)
            except OSError:
                finish()
                return

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    return threads[1]


def main():
    ms, host, port = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    delay = ms / 1000.0
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write_stdout(data):
        view = memoryview(data)
        while view:
            n = os.write(1, view)
            view = view[n:]

    def close_stdout():
        os.close(1)

    def shut_sock():
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    up = pump(lambda: os.read(0, 65536), sock.sendall, shut_sock, delay)
    down = pump(lambda: sock.recv(65536), write_stdout, close_stdout, delay)
    down.join()
    up.join(timeout=1)


if __name__ == "__main__":
    main()
