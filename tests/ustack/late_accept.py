"""A server that accepts late, for the ustack tests, run under the shim.

Usage: late_accept.py PORT N [watch]. Listens on 0.0.0.0:PORT, prints "listening", and
accepts nothing until stdin closes: the test's clients connect, send and end their
connections (orderly or by a reset) while they wait in the accept queue. Without
"watch" the listener is only listen()ed, so in stackd it is a passive member of its
port and connections wait in stackd's backlog; with "watch" it is first registered in an
epoll set, which makes it an accepting member, so stackd hands connections to the shim,
where they wait for accept(). Then it accepts N
connections and, for each, waits (epoll, 10 s at most) for what the kernel would report:
prints "conn K: B bytes then eof", "conn K: B bytes then reset" or "conn K: B bytes then
nothing" (the end was lost).
"""
import select
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
watch = sys.argv[3:] == ["watch"]
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(16)
if watch:
    lep = select.epoll()
    lep.register(lsock.fileno(), select.EPOLLIN)
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
