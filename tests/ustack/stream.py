"""Streams to HOST:PORT until the connection fails, then tries one more connect (used by
the ustack tests to kill stackd mid-transfer). Prints "connected", then
"error NAME ERRNO after BYTES" and "second connect: NAME ERRNO" (or "second connect ok").

Usage: stream.py HOST PORT
"""
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port))
print("connected", flush=True)
sent = 0
try:
    while True:
        sent += c.send(b"x" * 65536)
except OSError as e:
    print("error", type(e).__name__, e.errno, "after", sent, flush=True)
try:
    socket.create_connection((host, port), timeout=3)
    print("second connect ok", flush=True)
except OSError as e:
    print("second connect:", type(e).__name__, e.errno, flush=True)
