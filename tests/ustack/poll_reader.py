"""A level-triggered reader under the shim, the way CPython serves a socket with a
timeout: a non-blocking socket, poll() before every send and recv, and recv() of what is
there (often part of a message). poll() waits without a timeout, so a readiness that
never comes hangs here instead of passing late. Exchanges ROUNDS checksummed messages
with an echo server at HOST:PORT; prints "ok".

Usage: poll_reader.py HOST PORT ROUNDS
"""
import os
import select
import socket
import sys

host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((host, port))
c.setblocking(False)
p = select.poll()
p.register(c.fileno())


def wait_for(events):
    p.modify(c.fileno(), events)
    while not p.poll():
        pass


for k in range(rounds):
    msg = os.urandom(1 + (k * 104729) % 20000)
    sent = 0
    while sent < len(msg):
        wait_for(select.POLLOUT)
        sent += c.send(msg[sent:])
    got = bytearray()
    while len(got) < len(msg):
        wait_for(select.POLLIN)
        d = c.recv(65536)
        if not d:
            raise SystemExit("FAIL EOF from the echo server")
        got += d
    if bytes(got) != msg:
        raise SystemExit(f"FAIL echo differs in round {k}")
c.close()
print("ok", flush=True)
