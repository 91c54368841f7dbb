"""Blocking clients for the ustack tests, run under the shim: THREADS threads each connect
to HOST:PORT, exchange ROUNDS checksummed messages with an echo server, check their
addresses, then close. Also: a refused connect, and a connect with a timeout (Python then
connects non-blocking and polls). Prints "ok" and exits 0, or raises.

Usage: clients.py HOST PORT CLOSED_PORT THREADS ROUNDS
"""
import os
import socket
import sys
import threading

host, port, closed_port, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
errors = []


def exchange(c, seed):
    for k in range(rounds):
        msg = os.urandom(1 + (seed * 7919 + k * 104729) % 20000)
        c.sendall(msg)
        got = bytearray()
        while len(got) < len(msg):
            d = c.recv(65536)
            if not d:
                raise RuntimeError("EOF from the echo server")
            got += d
        if bytes(got) != msg:
            raise RuntimeError(f"thread {seed}: echo differs in round {k}")


def one(seed):
    try:
        c = socket.create_connection((host, port))
        local, peer = c.getsockname(), c.getpeername()
        if peer != (host, port):
            raise RuntimeError(f"getpeername {peer}")
        if local[0] == "0.0.0.0" or local[1] == 0:
            raise RuntimeError(f"getsockname {local}")
        exchange(c, seed)
        c.close()
    except Exception as e:  # reported by the main thread
        errors.append(repr(e))


ts = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
if errors:
    raise SystemExit("FAIL " + "; ".join(errors))

try:
    socket.create_connection((host, closed_port))
    raise SystemExit("FAIL connect to a closed port succeeded")
except ConnectionRefusedError:
    pass

c = socket.create_connection((host, port), timeout=10)
exchange(c, 99)
c.close()
print("ok", flush=True)
