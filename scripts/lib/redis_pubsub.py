#!/usr/bin/env python3
"""Pub/sub fan-out check for scripts/test-servers.sh: plain sockets speaking RESP.

  redis_pubsub.py HOST PORT [--subscribers N] [--messages M] [--deadline SECONDS]

Opens N subscriber connections, each SUBSCRIBEs to one channel (the confirmation is
checked), checks PUBSUB NUMSUB, then PUBLISHes M messages of varying sizes (0 B to
~1.5 KiB, distinct content) on one more connection, one at a time: every PUBLISH must
return N. Every subscriber must then have received exactly the M messages, in order,
byte for byte. Subscribers are drained while publishing (non-blocking, selectors), so
no buffer anywhere has to hold the whole stream. Everything is bounded by --deadline.
Exit 0 on success, 1 with one line saying what differed.
"""
import argparse
import selectors
import socket
import sys
import time


def fail(msg):
    print("pubsub: FAILED: " + msg, flush=True)
    sys.exit(1)


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Parser:
    """Incremental RESP2 parser: feed bytes, pop complete values."""

    def __init__(self):
        self.buf = bytearray()
        self.values = []

    def feed(self, data):
        self.buf += data
        while True:
            r = self._parse(0)
            if r is None:
                return
            val, end = r
            del self.buf[:end]
            self.values.append(val)

    def _line(self, pos):
        i = self.buf.find(b"\r\n", pos)
        if i < 0:
            return None
        return bytes(self.buf[pos:i]), i + 2

    def _parse(self, pos):
        if pos >= len(self.buf):
            return None
        t = self.buf[pos:pos + 1]
        r = self._line(pos + 1)
        if r is None:
            return None
        line, nxt = r
        if t == b"+":
            return line.decode(), nxt
        if t == b"-":
            return Exception(line.decode()), nxt
        if t == b":":
            return int(line), nxt
        if t == b"$":
            n = int(line)
            if n < 0:
                return None, nxt
            if len(self.buf) < nxt + n + 2:
                return None
            return bytes(self.buf[nxt:nxt + n]), nxt + n + 2
        if t == b"*":
            n = int(line)
            items = []
            for _ in range(n):
                r = self._parse(nxt)
                if r is None:
                    return None
                v, nxt = r
                items.append(v)
            return items, nxt
        raise ValueError("bad RESP type byte %r" % t)


def payload(i):
    # Distinct, varying sizes (0 .. ~1.5 KiB), including CR/LF bytes inside.
    body = (b"%d\r\n" % i) * ((i * 37) % 300)
    return b"msg-%d:" % i + body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--subscribers", type=int, default=50)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=30.0)
    ap.add_argument("--channel", default="rs:fanout")
    a = ap.parse_args()
    end = time.monotonic() + a.deadline

    def left():
        t = end - time.monotonic()
        if t <= 0:
            fail("deadline of %.0fs reached" % a.deadline)
        return t

    subs = []
    for _ in range(a.subscribers):
        s = socket.create_connection((a.host, a.port), timeout=left())
        s.sendall(enc("SUBSCRIBE", a.channel))
        subs.append(s)
    parsers = [Parser() for _ in subs]
    for k, s in enumerate(subs):
        while not parsers[k].values:
            s.settimeout(left())
            d = s.recv(65536)
            if not d:
                fail("subscriber %d: EOF before the SUBSCRIBE confirmation" % k)
            parsers[k].feed(d)
        conf = parsers[k].values.pop(0)
        if conf != [b"subscribe", a.channel.encode(), 1]:
            fail("subscriber %d: SUBSCRIBE answered %r" % (k, conf))

    pub = socket.create_connection((a.host, a.port), timeout=left())
    pp = Parser()

    def call(*args):
        pub.sendall(enc(*args))
        while not pp.values:
            pub.settimeout(left())
            d = pub.recv(65536)
            if not d:
                fail("publisher: EOF")
            pp.feed(d)
        return pp.values.pop(0)

    numsub = call("PUBSUB", "NUMSUB", a.channel)
    if numsub != [a.channel.encode(), a.subscribers]:
        fail("PUBSUB NUMSUB answered %r, expected %d subscribers" % (numsub, a.subscribers))

    sel = selectors.DefaultSelector()
    for k, s in enumerate(subs):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, k)
    got = [[] for _ in subs]

    def drain(timeout):
        for key, _ in sel.select(timeout):
            k = key.data
            try:
                d = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            if not d:
                fail("subscriber %d: EOF after %d messages" % (k, len(got[k])))
            parsers[k].feed(d)
            for v in parsers[k].values:
                if not (isinstance(v, list) and len(v) == 3 and v[0] == b"message"
                        and v[1] == a.channel.encode()):
                    fail("subscriber %d: unexpected push %r" % (k, v if len(repr(v)) < 200 else repr(v)[:200]))
                got[k].append(v[2])
            parsers[k].values.clear()

    for i in range(a.messages):
        n = call("PUBLISH", a.channel, payload(i))
        if n != a.subscribers:
            fail("PUBLISH #%d returned %r, expected %d" % (i, n, a.subscribers))
        drain(0)
    while any(len(g) < a.messages for g in got):
        drain(min(0.5, left()))
    for k, g in enumerate(got):
        if len(g) != a.messages:
            fail("subscriber %d: %d messages, expected %d" % (k, len(g), a.messages))
        for i, m in enumerate(g):
            if m != payload(i):
                fail("subscriber %d: message %d differs (got %r...)" % (k, i, m[:40]))
    print("pubsub: %d subscribers each received all %d messages in order; every PUBLISH returned %d"
          % (a.subscribers, a.messages, a.subscribers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
