"""A server that accepts late, for the ustack tests, run under the shim.

Usage: late_accept.py PORT N. Listens on 0.0.0.0:PORT, prints "listening", and accepts
nothing until stdin closes: the test's clients connect, send and end their connections
(orderly or by a reset) while they wait in the accept queue. Then it accepts N
connections and, for each, waits (epoll, 10 s at most) for what the kernel would report:
prints "conn K: B bytes then eof", "conn K: B bytes then reset" or "conn K: B bytes then
nothing" (the end was lost).
"""
import select
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(16)
# The shim joins a listener to stackd at its first accept or poll (so that nginx's master,
# which listens and never accepts, takes no connections from its workers): one
# non-blocking attempt joins it.
lsock.setblocking(False)
try:
    lsock.accept()
except BlockingIOError:
    pass
lsock.setblocking(True)
print("listening", flush=True)
sys.stdin.read()
for k in range(n):
    c, _ = lsock.accept()
    c.setblocking(False)
    ep = select.epoll()
    ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    got, end = 0, "nothing"
    while end == "nothing":
        if not ep.poll(10.0):
            break
        try:
            data = c.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        except BlockingIOError:
            continue
        if not data:
            end = "eof"
        got += len(data)
    print(f"conn {k}: {got} bytes then {end}", flush=True)
    ep.close()
    c.close()
