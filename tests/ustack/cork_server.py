"""Corked responses for the ustack tests, run under the shim.

Usage: cork_server.py PORT. Listens on 0.0.0.0:PORT, prints "listening", accepts one
connection and answers each request (one recv) the way nginx with "sendfile on;
tcp_nopush on;" does, or with MSG_MORE:

- b"cork N": TCP_CORK on, a 180-byte header (send), the 1024-byte body (os.sendfile from
  a file when N is odd, send when even), TCP_CORK off;
- b"more N": the header with send(MSG_MORE), the body with send;
- b"hold": TCP_CORK on and 100 bytes, never uncorked (the cork's 200 ms ceiling must
  send them).

For even N a 5 ms pause separates header and body, long enough for stackd to see the
header alone, which it must hold. Prints "served N" when the peer closes, then exits.
"""
import os
import socket
import sys
import tempfile
import time

HEADER = b"h" * 179 + b"\n"
BODY = bytes(ord("a") + k % 26 for k in range(1024))

port = int(sys.argv[1])
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(8)
print("listening", flush=True)
c, _ = lsock.accept()
body_file = tempfile.TemporaryFile()
body_file.write(BODY)
body_file.flush()
served = 0


def cork(on):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


while True:
    request = c.recv(64)
    if not request:
        break
    if request == b"hold":
        cork(True)
        c.sendall(b"w" * 100)
        continue
    mode, n = request.split()
    n = int(n)
    if mode == b"cork":
        cork(True)
        c.sendall(HEADER)
    else:
        c.send(HEADER, socket.MSG_MORE)
    if n % 2 == 0:
        time.sleep(0.005)
    if mode == b"cork" and n % 2 == 1:
        assert os.sendfile(c.fileno(), body_file.fileno(), 0, len(BODY)) == len(BODY)
    else:
        c.sendall(BODY)
    if mode == b"cork":
        cork(False)
    served += 1
print(f"served {served}", flush=True)
c.close()
