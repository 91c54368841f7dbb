"""An event-loop echo server (selectors: epoll) for the ustack tests, run under the shim.

Usage: echo_server.py PORT. Listens on 0.0.0.0:PORT (so stackd's address and loopback both
reach it), prints "listening", echoes every connection until the peer closes, and prints
"closed N" after each close. Exits when stdin closes.
"""
import selectors
import socket
import sys

port = int(sys.argv[1])
sel = selectors.DefaultSelector()
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(128)
lsock.setblocking(False)
sel.register(lsock, selectors.EVENT_READ, "listener")
sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
print("listening", flush=True)
pending = {}
closed = 0


def close(c):
    global closed
    sel.unregister(c)
    pending.pop(c, None)
    c.close()
    closed += 1
    print(f"closed {closed}", flush=True)


while True:
    for key, events in sel.select():
        if key.data == "stdin":
            sys.exit(0)
        if key.data == "listener":
            while True:
                try:
                    c, _ = lsock.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                pending[c] = b""
                sel.register(c, selectors.EVENT_READ, "conn")
            continue
        c = key.fileobj
        if events & selectors.EVENT_READ:
            try:
                data = c.recv(65536)
            except BlockingIOError:
                data = None
            except ConnectionResetError:
                close(c)
                continue
            if data == b"":
                close(c)
                continue
            if data:
                pending[c] += data
        if pending.get(c):
            try:
                n = c.send(pending[c])
                pending[c] = pending[c][n:]
            except BlockingIOError:
                pass
        sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[c] else 0), "conn")
