#!/usr/bin/env python3
"""Raw-socket HTTP clients for scenario_mtproxy in scripts/test-servers.sh: the
connection shapes curl and wrk do not make.

  mtproxy_client.py sink HOST PORT
      The upstream for the half-close check: serves connections one at a time; reads
      each until EOF, then sends back every byte it got and closes. It answers nothing
      until the FIN arrives, so a proxy that does not forward the FIN hangs the client.
  mtproxy_client.py halfclose HOST PORT SIZE
      Through the proxy to a sink: sends SIZE random bytes, then shutdown(SHUT_WR), then
      reads until EOF. The proxy must forward every byte before the FIN, keep relaying
      the other way after the client's half-close, and forward the sink's FIN after its
      last byte: the bytes read must equal the bytes sent.
  mtproxy_client.py reset HOST PORT PATH
      GET a large file, read 64 KiB of the answer, then close with SO_LINGER 0 (RST)
      while the proxy is still sending: the proxy must end that connection and its
      upstream (the caller later checks that no connection stayed open).
  mtproxy_client.py hold HOST PORT N PATH
      N connections opened one after another; on each, one keep-alive GET whose answer is
      read in full before the next connection is opened (so the server has accepted every
      connection before the next SYN), all held open until the end, then closed.

Every socket operation has a timeout (10 s). Exit 0 on success, 1 with one line saying
what went wrong.
"""
import os
import socket
import sys

TIMEOUT = 10


def fail(msg):
    print("mtproxy_client: FAILED: " + msg, flush=True)
    sys.exit(1)


def connect(host, port):
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_head(s, buf):
    """Reads until the end of the response head; returns (status, headers, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            fail("EOF before the end of the response head (%d bytes)" % len(buf))
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def read_to_eof(s):
    got = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return got
        got += chunk


def sink(host, port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(16)
    while True:
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        try:
            c.sendall(read_to_eof(c))
        except OSError as e:
            print("sink: %s" % e, flush=True)
        c.close()


def halfclose(host, port, size):
    data = os.urandom(int(size))
    s = connect(host, port)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = read_to_eof(s)
    s.close()
    if got != data:
        fail("half-close: sent %d bytes, then FIN; got back %d bytes before EOF%s"
             % (len(data), len(got), "" if len(got) != len(data) else ", content differs"))
    print("half-close: %d bytes, FIN, the same %d bytes back, then EOF" % (len(data), len(got)))


def reset(host, port, path):
    s = connect(host, port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
    got = 0
    while got < 65536:
        chunk = s.recv(65536 - got)
        if not chunk:
            fail("EOF after %d bytes, before the reset" % got)
        got += len(chunk)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    print("reset: RST sent after %d bytes" % got)


def hold(host, port, n, path):
    held = []
    for i in range(int(n)):
        s = connect(host, port)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        status, headers, body = read_head(s, b"")
        want = int(headers.get("content-length", "-1"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                fail("connection %d: EOF after %d of %d body bytes" % (i, len(body), want))
            body += chunk
        if status != 200 or len(body) != want:
            fail("connection %d: status %d, %d body bytes" % (i, status, len(body)))
        held.append(s)
    for s in held:
        s.close()
    print("hold: %d connections opened one after another, all answered, then closed" % len(held))


def main():
    cmds = {"sink": (sink, 2), "halfclose": (halfclose, 3), "reset": (reset, 3), "hold": (hold, 4)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 != cmds[sys.argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    fn, _ = cmds[sys.argv[1]]
    try:
        fn(*sys.argv[2:])
    except OSError as e:
        fail("%s: %s" % (sys.argv[1], e))


if __name__ == "__main__":
    main()
