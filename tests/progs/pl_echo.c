/* Preload tests: echo servers and data transfers over loopback TCP, plus the sockets the
 * shim must leave alone (UDP, Unix, pipes). Usage: pl_echo SCENARIO (see cases[] below). */
#include "pl_util.h"

#include <stddef.h>
#include <sys/epoll.h>
#include <sys/un.h>

/* ---- blocking echo: a server thread echoes until EOF; the client checks every byte. */

static void *echo_server(void *arg) {
    int lfd = (int)(intptr_t)arg;
    int fd = OK(accept(lfd, NULL, NULL));
    char buf[16384];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "echo server read");
        if (r == 0)
            break;
        pl_write_all(fd, buf, (size_t)r);
    }
    close(fd);
    return NULL;
}

static void blocking_echo(int family) {
    int lfd = pl_listen(family, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, echo_server, (void *)(intptr_t)lfd) == 0, "pthread_create");
    STEP("connect");
    int fd = pl_connect_to(lfd);
    /* Sizes around segment and buffer boundaries; the biggest exceeds any single read. */
    static const size_t sizes[] = {1, 7, 100, 1460, 4096, 65536, 65537, 300000};
    static uint8_t out[300000], in[300000];
    uint64_t offset = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        STEP("echo round trip");
        pl_fill(7, offset, out, sizes[i]);
        /* Write and read back message by message: the echo can hold back at most one
         * message, so the blocking client never deadlocks on full buffers. */
        if (sizes[i] <= 65537) {
            pl_write_all(fd, out, sizes[i]);
            pl_read_exact(fd, in, sizes[i]);
        } else {
            /* Larger than the socket buffers: interleave, keeping at most ~64 KiB in
             * flight so neither side can block on full buffers. */
            size_t done_w = 0, done_r = 0;
            while (done_r < sizes[i]) {
                if (done_w < sizes[i]) {
                    size_t n = sizes[i] - done_w < 32768 ? sizes[i] - done_w : 32768;
                    pl_write_all(fd, out + done_w, n);
                    done_w += n;
                }
                while (done_r < done_w && (done_w - done_r > 32768 || done_w == sizes[i])) {
                    ssize_t r = read(fd, in + done_r, done_w - done_r);
                    CHECK(r > 0, "read echo");
                    done_r += (size_t)r;
                }
            }
        }
        pl_verify(7, offset, in, sizes[i]);
        offset += sizes[i];
    }
    STEP("half-close ends the echo");
    OK(shutdown(fd, SHUT_WR));
    pl_expect_eof(fd);
    close(fd);
    pthread_join(t, NULL);
    close(lfd);
}

static void t_blocking(void) { blocking_echo(AF_INET); }

static void t_ipv6(void) {
    blocking_echo(AF_INET6);
    /* The addresses both ends report must be ::1 with the listener's port. */
    int c, s;
    pl_tcp_pair_family(AF_INET6, &c, &s);
    struct sockaddr_in6 a, b;
    socklen_t la = sizeof a, lb = sizeof b;
    OK(getsockname(c, (struct sockaddr *)&a, &la));
    OK(getpeername(s, (struct sockaddr *)&b, &lb));
    CHECK(la == sizeof a && lb == sizeof b, "sockaddr_in6 lengths %u %u", la, lb);
    CHECK(a.sin6_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a.sin6_addr), "client not on ::1");
    CHECK(a.sin6_port == b.sin6_port && memcmp(&a.sin6_addr, &b.sin6_addr, 16) == 0,
          "client getsockname != server getpeername");
    close(c);
    close(s);
}

/* ---- non-blocking echo with epoll: one thread runs a server and 8 clients. */

#define NB_CLIENTS 8
#define NB_TOTAL (256 * 1024)
#define NB_BUF 65536
#define MAXFD 1024

enum role { R_NONE, R_LISTEN, R_SERVER, R_CLIENT };
struct conn {
    enum role role;
    int id;                     /* client index = pattern seed */
    uint32_t interest;          /* current epoll mask */
    int connected, eof;         /* client: connect completed; server: peer sent FIN */
    size_t sent, received;      /* client byte counters */
    uint8_t buf[NB_BUF];        /* server: bytes read but not yet echoed */
    size_t head, tail;
};
static struct conn *conns[MAXFD];

static void nb_interest(int ep, int fd, uint32_t want) {
    struct conn *c = conns[fd];
    if (c->interest == want)
        return;
    struct epoll_event ev = {.events = want, .data.fd = fd};
    OK(epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev));
    c->interest = want;
}

static struct conn *nb_add(int ep, int fd, enum role role, uint32_t events) {
    CHECK(fd >= 0 && fd < MAXFD && !conns[fd], "fd %d out of range or reused", fd);
    struct conn *c = calloc(1, sizeof *c);
    CHECK(c != NULL, "calloc");
    c->role = role;
    c->interest = events;
    conns[fd] = c;
    struct epoll_event ev = {.events = events, .data.fd = fd};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    return c;
}

static void nb_close(int ep, int fd) {
    OK(epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL));
    close(fd);
    free(conns[fd]);
    conns[fd] = NULL;
}

static void t_epoll_nb(void) {
    int ep = OK(epoll_create1(EPOLL_CLOEXEC));
    int lfd = pl_listen(AF_INET, SOCK_NONBLOCK);
    nb_add(ep, lfd, R_LISTEN, EPOLLIN);
    struct sockaddr_storage ss;
    socklen_t sl = pl_tcp_connect_addr(AF_INET, pl_port_of(lfd), &ss);
    for (int i = 0; i < NB_CLIENTS; i++) {
        int fd = OK(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
        int r = connect(fd, (struct sockaddr *)&ss, sl);
        CHECK(r == 0 || errno == EINPROGRESS, "non-blocking connect");
        nb_add(ep, fd, R_CLIENT, EPOLLIN | EPOLLOUT)->id = i;
    }
    int clients_done = 0, servers_open = 0, accepted = 0;
    static uint8_t tmp[NB_BUF];
    while (clients_done < NB_CLIENTS || servers_open > 0) {
        STEP("epoll_nb event loop");
        struct epoll_event evs[32];
        int n = epoll_wait(ep, evs, 32, 5000);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "epoll_wait returned %d: the echo stalled (%d/%d clients done)", n,
              clients_done, NB_CLIENTS);
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            struct conn *c = conns[fd];
            if (!c)
                continue; /* closed earlier in this batch */
            if (c->role == R_LISTEN) {
                for (;;) {
                    int a = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
                    if (a < 0) {
                        CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "accept4");
                        break;
                    }
                    nb_add(ep, a, R_SERVER, EPOLLIN);
                    servers_open++;
                    accepted++;
                }
            } else if (c->role == R_SERVER) {
                if ((evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->eof &&
                    c->tail < NB_BUF) {
                    ssize_t r = read(fd, c->buf + c->tail, NB_BUF - c->tail);
                    if (r > 0)
                        c->tail += (size_t)r;
                    else if (r == 0)
                        c->eof = 1;
                    else
                        CHECK(errno == EAGAIN, "server read");
                }
                if (c->head < c->tail) {
                    ssize_t w = write(fd, c->buf + c->head, c->tail - c->head);
                    if (w > 0)
                        c->head += (size_t)w;
                    else
                        CHECK(w < 0 && errno == EAGAIN, "server write");
                    if (c->head == c->tail)
                        c->head = c->tail = 0;
                }
                if (c->eof && c->head == c->tail) {
                    nb_close(ep, fd);
                    servers_open--;
                    continue;
                }
                nb_interest(ep, fd, (c->eof || c->tail == NB_BUF ? 0 : EPOLLIN) |
                                        (c->head < c->tail ? EPOLLOUT : 0));
            } else {
                if (!c->connected && (evs[k].events & (EPOLLOUT | EPOLLERR))) {
                    int err = -1;
                    socklen_t el = sizeof err;
                    OK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
                    CHECK(err == 0, "client %d: connect failed: %s", c->id, strerror(err));
                    c->connected = 1;
                }
                if (c->connected && c->sent < NB_TOTAL && (evs[k].events & EPOLLOUT)) {
                    /* Odd sizes so segments and reads never line up with writes. */
                    size_t want = 1 + (c->sent * 7919 + (size_t)c->id * 104729) % 16383;
                    if (want > NB_TOTAL - c->sent)
                        want = NB_TOTAL - c->sent;
                    pl_fill((uint64_t)c->id, c->sent, tmp, want);
                    ssize_t w = write(fd, tmp, want);
                    if (w > 0)
                        c->sent += (size_t)w;
                    else
                        CHECK(w < 0 && errno == EAGAIN, "client write");
                }
                if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    ssize_t r = read(fd, tmp, sizeof tmp);
                    if (r > 0) {
                        pl_verify((uint64_t)c->id, c->received, tmp, (size_t)r);
                        c->received += (size_t)r;
                    } else {
                        CHECK(r < 0 && errno == EAGAIN, "client %d read %zd after %zu bytes",
                              c->id, r, c->received);
                    }
                }
                CHECK(c->received <= c->sent, "echoed more than was sent");
                if (c->received == NB_TOTAL) {
                    nb_close(ep, fd); /* the server sees EOF and closes its side */
                    clients_done++;
                    continue;
                }
                nb_interest(ep, fd, EPOLLIN | (c->sent < NB_TOTAL ? EPOLLOUT : 0));
            }
        }
    }
    CHECK(accepted == NB_CLIENTS, "accepted %d connections", accepted);
    nb_close(ep, lfd);
    close(ep);
}

/* ---- 8 MiB in both directions at once, random read sizes, checksummed. */

#define BULK (8u << 20)

struct bulk_arg {
    int fd;
    uint64_t seed;
    uint64_t sum;
    unsigned short_reads;
};

static void *bulk_writer(void *p) {
    struct bulk_arg *a = p;
    static __thread uint8_t chunk[1 << 20];
    uint64_t off = 0, h = PL_FNV_INIT;
    while (off < BULK) {
        /* Writes from 1 byte to 1 MiB. */
        size_t n = 1 + (size_t)((off * 2654435761u) % (1u << 20));
        if (n > BULK - off)
            n = BULK - off;
        pl_fill(a->seed, off, chunk, n);
        h = pl_fnv(h, chunk, n);
        pl_write_all(a->fd, chunk, n);
        off += n;
    }
    OK(shutdown(a->fd, SHUT_WR));
    a->sum = h;
    return NULL;
}

static void *bulk_reader(void *p) {
    struct bulk_arg *a = p;
    static __thread uint8_t buf[256 * 1024];
    uint64_t off = 0, h = PL_FNV_INIT;
    unsigned i = 0;
    for (;;) {
        size_t want = 1 + (i++ * 40503u) % sizeof buf;
        ssize_t r = read(a->fd, buf, want);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "bulk read");
        if (r == 0)
            break;
        if ((size_t)r < want)
            a->short_reads++;
        pl_verify(a->seed, off, buf, (size_t)r);
        h = pl_fnv(h, buf, (size_t)r);
        off += (uint64_t)r;
        CHECK(off <= BULK, "received more than %u bytes", BULK);
    }
    CHECK(off == BULK, "EOF after %llu of %u bytes", (unsigned long long)off, BULK);
    a->sum = h;
    return NULL;
}

static void t_bulk(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    struct bulk_arg w1 = {.fd = c, .seed = 11}, w2 = {.fd = s, .seed = 22};
    struct bulk_arg r1 = {.fd = s, .seed = 11}, r2 = {.fd = c, .seed = 22};
    pthread_t t[4];
    STEP("bulk transfer both directions");
    CHECK(pthread_create(&t[0], NULL, bulk_writer, &w1) == 0, "pthread_create");
    CHECK(pthread_create(&t[1], NULL, bulk_writer, &w2) == 0, "pthread_create");
    CHECK(pthread_create(&t[2], NULL, bulk_reader, &r1) == 0, "pthread_create");
    CHECK(pthread_create(&t[3], NULL, bulk_reader, &r2) == 0, "pthread_create");
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(w1.sum == r1.sum, "client->server checksum mismatch");
    CHECK(w2.sum == r2.sum, "server->client checksum mismatch");
    printf("bulk: 2 x %u bytes, fnv %016llx / %016llx, short reads %u / %u\n", BULK,
           (unsigned long long)r1.sum, (unsigned long long)r2.sum, r1.short_reads,
           r2.short_reads);
    close(c);
    close(s);
}

/* ---- accept4 flags, and accept() not inheriting the listener's O_NONBLOCK. */

static void check_flags(int fd, int nonblock, int cloexec, const char *what) {
    int fl = OK(fcntl(fd, F_GETFL));
    int fdfl = OK(fcntl(fd, F_GETFD));
    CHECK(!!(fl & O_NONBLOCK) == nonblock, "%s: O_NONBLOCK is %d", what, !!(fl & O_NONBLOCK));
    CHECK(!!(fdfl & FD_CLOEXEC) == cloexec, "%s: FD_CLOEXEC is %d", what, !!(fdfl & FD_CLOEXEC));
}

static void t_accept4(void) {
    int lfd = pl_listen(AF_INET, 0);
    STEP("accept4(SOCK_NONBLOCK|SOCK_CLOEXEC)");
    int c1 = pl_connect_to(lfd);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int a1 = OK(accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC));
    check_flags(a1, 1, 1, "accept4(NONBLOCK|CLOEXEC)");
    struct sockaddr_in local;
    socklen_t ll = sizeof local;
    OK(getsockname(c1, (struct sockaddr *)&local, &ll));
    CHECK(pl == sizeof peer && peer.sin_port == local.sin_port &&
              peer.sin_addr.s_addr == local.sin_addr.s_addr,
          "accept4 peer address differs from the client's own");
    char b;
    EXPECT_ERR(read(a1, &b, 1), EAGAIN);

    STEP("accept4(0)");
    int c2 = pl_connect_to(lfd);
    int a2 = OK(accept4(lfd, NULL, NULL, 0));
    check_flags(a2, 0, 0, "accept4(0)");

    STEP("accept4(SOCK_CLOEXEC) only");
    int c3 = pl_connect_to(lfd);
    int a3 = OK(accept4(lfd, NULL, NULL, SOCK_CLOEXEC));
    check_flags(a3, 0, 1, "accept4(CLOEXEC)");

    STEP("accept4 with invalid flags");
    EXPECT_ERR(accept4(lfd, NULL, NULL, 0x1), EINVAL);

    STEP("accept() on a non-blocking listener");
    pl_set_nonblock(lfd, 1);
    EXPECT_ERR(accept(lfd, NULL, NULL), EAGAIN);
    int c4 = pl_connect_to(lfd);
    pl_wait_for(lfd, POLLIN, 5000);
    int a4 = OK(accept(lfd, NULL, NULL));
    /* Linux: accepted sockets do not inherit O_NONBLOCK from the listener. */
    check_flags(a4, 0, 0, "accept() from non-blocking listener");

    STEP("data on flagged sockets");
    pl_write_all(c1, "x", 1);
    pl_wait_for(a1, POLLIN, 5000);
    OK(read(a1, &b, 1));
    CHECK(b == 'x', "wrong byte");
    int fds[] = {c1, c2, c3, c4, a1, a2, a3, a4, lfd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        close(fds[i]);
}

/* ---- getsockname/getpeername agree between the two ends. */

static void t_names(void) {
    int lfd = pl_listen(AF_INET, 0);
    int c = pl_connect_to(lfd);
    int s = OK(accept(lfd, NULL, NULL));
    struct sockaddr_in cl, cp, sl, sp, ll;
    socklen_t n1 = sizeof cl, n2 = sizeof cp, n3 = sizeof sl, n4 = sizeof sp, n5 = sizeof ll;
    OK(getsockname(c, (struct sockaddr *)&cl, &n1));
    OK(getpeername(c, (struct sockaddr *)&cp, &n2));
    OK(getsockname(s, (struct sockaddr *)&sl, &n3));
    OK(getpeername(s, (struct sockaddr *)&sp, &n4));
    OK(getsockname(lfd, (struct sockaddr *)&ll, &n5));
    CHECK(n1 == sizeof cl && n2 == sizeof cp && n3 == sizeof sl && n4 == sizeof sp,
          "address lengths %u %u %u %u", n1, n2, n3, n4);
    CHECK(cl.sin_family == AF_INET && cl.sin_addr.s_addr == pl_env_addr("PL_ADDR_CLIENT").s_addr,
          "client local address not 127.0.0.1 (or PL_ADDR_CLIENT)");
    CHECK(cl.sin_port == sp.sin_port && cl.sin_addr.s_addr == sp.sin_addr.s_addr,
          "client getsockname != server getpeername");
    CHECK(cp.sin_port == sl.sin_port && cp.sin_addr.s_addr == sl.sin_addr.s_addr,
          "client getpeername != server getsockname");
    CHECK(sl.sin_port == ll.sin_port, "accepted socket's port differs from the listener's");

    STEP("truncated address buffer");
    /* The kernel copies what fits and reports the full length. */
    struct sockaddr_in t;
    memset(&t, 0xee, sizeof t);
    socklen_t tl = 4;
    OK(getsockname(c, (struct sockaddr *)&t, &tl));
    CHECK(tl == sizeof t, "truncated getsockname reported length %u", tl);
    CHECK(t.sin_family == AF_INET && t.sin_port == cl.sin_port, "first 4 bytes wrong");
    CHECK(t.sin_addr.s_addr == 0xeeeeeeee, "wrote past the given length");

    STEP("unconnected socket");
    int u = OK(socket(AF_INET, SOCK_STREAM, 0));
    struct sockaddr_in ua;
    socklen_t ul = sizeof ua;
    EXPECT_ERR(getpeername(u, (struct sockaddr *)&ua, &ul), ENOTCONN);
    ul = sizeof ua;
    OK(getsockname(u, (struct sockaddr *)&ua, &ul));
    CHECK(ua.sin_port == 0 && ua.sin_addr.s_addr == 0, "unbound socket has an address");
    EXPECT_ERR(getpeername(lfd, (struct sockaddr *)&ua, &ul), ENOTCONN);
    close(u);
    close(c);
    close(s);
    close(lfd);
}

/* ---- UDP, Unix-domain sockets and pipes: must behave exactly as without the shim. */

static void udp_part(void) {
    STEP("udp datagrams keep their boundaries");
    int a = OK(socket(AF_INET, SOCK_DGRAM, 0));
    int b = OK(socket(AF_INET, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t sl = pl_loopback(AF_INET, 0, &ss);
    OK(bind(a, (struct sockaddr *)&ss, sl));
    OK(bind(b, (struct sockaddr *)&ss, sl));
    struct sockaddr_storage to;
    socklen_t tl = pl_loopback(AF_INET, pl_port_of(b), &to);
    static uint8_t out[60000], in[65536];
    static const size_t sizes[] = {10, 1000, 60000, 0};
    for (size_t i = 0; i < 4; i++) {
        pl_fill(i, 0, out, sizes[i]);
        CHECK(sendto(a, out, sizes[i], 0, (struct sockaddr *)&to, tl) == (ssize_t)sizes[i],
              "sendto %zu", sizes[i]);
    }
    for (size_t i = 0; i < 4; i++) {
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(b, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
        CHECK(r == (ssize_t)sizes[i], "datagram %zu: %zd bytes, expected %zu", i, r, sizes[i]);
        pl_verify(i, 0, in, sizes[i]);
        CHECK(fl == sizeof from && from.sin_port == htons(pl_port_of(a)), "wrong source");
    }
    STEP("udp truncation");
    pl_fill(9, 0, out, 1000);
    OK(sendto(a, out, 1000, 0, (struct sockaddr *)&to, tl));
    OK(sendto(a, out, 1000, 0, (struct sockaddr *)&to, tl));
    CHECK(recv(b, in, 100, 0) == 100, "short buffer takes 100 bytes");
    CHECK(recv(b, in, 100, MSG_TRUNC) == 1000, "MSG_TRUNC reports the datagram length");
    EXPECT_ERR(recv(b, in, 100, MSG_DONTWAIT), EAGAIN);
    STEP("connected udp");
    OK(connect(a, (struct sockaddr *)&to, tl));
    OK(send(a, "ping", 4, 0));
    CHECK(recv(b, in, sizeof in, 0) == 4 && memcmp(in, "ping", 4) == 0, "connected udp");
    close(a);
    close(b);
}

static void unix_part(void) {
    STEP("unix stream socketpair");
    int sv[2];
    OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    static uint8_t buf[100000];
    pl_fill(3, 0, buf, 100000);
    /* Up to the buffer size without a reader thread: 50 KB fits any Unix socket buffer. */
    pl_write_all(sv[0], buf, 50000);
    static uint8_t in[100000];
    pl_read_exact(sv[1], in, 50000);
    pl_verify(3, 0, in, 50000);
    close(sv[0]);
    pl_expect_eof(sv[1]);
    close(sv[1]);

    STEP("unix datagram socketpair");
    OK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    OK(send(sv[0], "a", 1, 0));
    OK(send(sv[0], "bcd", 3, 0));
    CHECK(recv(sv[1], in, sizeof in, 0) == 1, "first datagram");
    CHECK(recv(sv[1], in, sizeof in, 0) == 3, "second datagram");
    close(sv[0]);
    close(sv[1]);

    STEP("abstract unix listener");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int nlen = snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "ringshim-pl-%d", (int)getpid());
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + nlen);
    int l = OK(socket(AF_UNIX, SOCK_STREAM, 0));
    OK(bind(l, (struct sockaddr *)&sa, alen));
    OK(listen(l, 4));
    int c = OK(socket(AF_UNIX, SOCK_STREAM, 0));
    OK(connect(c, (struct sockaddr *)&sa, alen));
    int s = OK(accept(l, NULL, NULL));
    pl_write_all(c, "hello", 5);
    pl_read_exact(s, in, 5);
    CHECK(memcmp(in, "hello", 5) == 0, "unix data");
    int q = -1;
    pl_write_all(s, "abc", 3);
    pl_wait_for(c, POLLIN, 5000);
    OK(ioctl(c, FIONREAD, &q));
    CHECK(q == 3, "FIONREAD on unix socket = %d", q);
    close(c);
    close(s);
    close(l);
}

static void pipe_part(void) {
    STEP("pipe");
    int p[2];
    OK(pipe(p));
    static uint8_t buf[4096], in[4096];
    pl_fill(5, 0, buf, sizeof buf);
    pl_write_all(p[1], buf, sizeof buf);
    int q = -1;
    OK(ioctl(p[0], FIONREAD, &q));
    CHECK(q == (int)sizeof buf, "FIONREAD on pipe = %d", q);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    CHECK(poll(&pf, 1, 0) == 1 && pf.revents == POLLIN, "pipe poll revents 0x%x", pf.revents);
    pl_read_exact(p[0], in, sizeof in);
    pl_verify(5, 0, in, sizeof in);
    pl_set_nonblock(p[0], 1);
    EXPECT_ERR(read(p[0], in, 1), EAGAIN);
    close(p[1]);
    CHECK(read(p[0], in, 1) == 0, "pipe EOF");
    close(p[0]);
}

static void t_untouched(void) {
    udp_part();
    unix_part();
    pipe_part();
}

static const struct pl_case cases[] = {
    {"blocking", t_blocking}, {"epoll_nb", t_epoll_nb}, {"bulk", t_bulk},
    {"ipv6", t_ipv6},         {"accept4", t_accept4},   {"names", t_names},
    {"untouched", t_untouched}, {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_echo", cases); }
