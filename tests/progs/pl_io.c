/* Preload tests: the data path — sendfile, vectored and message I/O, flags, half-close and
 * close semantics on loopback TCP. Usage: pl_io SCENARIO (see cases[] below). */
#include "pl_util.h"

#include <limits.h>
#include <sys/sendfile.h>
#include <sys/uio.h>

/* ---- a reader thread that checks an expected byte stream, given as segments */

struct segment {
    uint64_t seed, offset; /* bytes pl_pattern(seed, offset..offset+len) */
    size_t len;
};

struct checker {
    int fd;
    const struct segment *segs;
    size_t nsegs;
    int start_delay_ms; /* let the writer fill the buffers first */
    uint64_t total;
};

static void *checker_run(void *arg) {
    struct checker *ck = arg;
    if (ck->start_delay_ms)
        pl_sleep_ms(ck->start_delay_ms);
    static __thread uint8_t buf[65536];
    size_t seg = 0, in_seg = 0;
    for (;;) {
        ssize_t r = read(ck->fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "checker read");
        if (r == 0)
            break;
        /* Verify r bytes, crossing segment boundaries as needed. */
        size_t done = 0;
        while (done < (size_t)r) {
            CHECK(seg < ck->nsegs, "more bytes than expected (%llu so far)",
                  (unsigned long long)ck->total);
            size_t n = ck->segs[seg].len - in_seg;
            if (n > (size_t)r - done)
                n = (size_t)r - done;
            pl_verify(ck->segs[seg].seed, ck->segs[seg].offset + in_seg, buf + done, n);
            done += n;
            in_seg += n;
            if (in_seg == ck->segs[seg].len) {
                seg++;
                in_seg = 0;
            }
        }
        ck->total += (uint64_t)r;
    }
    CHECK(seg == ck->nsegs, "EOF after %llu bytes, in segment %zu of %zu",
          (unsigned long long)ck->total, seg, ck->nsegs);
    return NULL;
}

static pthread_t checker_start(struct checker *ck) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, checker_run, ck) == 0, "pthread_create");
    return t;
}

/* An unlinked temp file holding `size` bytes of stream `seed` (nothing left on disk). */
static int temp_file(uint64_t seed, size_t size) {
    char path[] = "/tmp/ringshim-pl-XXXXXX";
    int fd = OK(mkstemp(path));
    OK(unlink(path));
    static uint8_t chunk[65536];
    for (size_t off = 0; off < size; off += sizeof chunk) {
        size_t n = size - off < sizeof chunk ? size - off : sizeof chunk;
        pl_fill(seed, off, chunk, n);
        pl_write_all(fd, chunk, n);
    }
    OK(lseek(fd, 0, SEEK_SET));
    return fd;
}

#define FILE_SIZE ((3u << 20) + 123)

static void t_sendfile(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int file = temp_file(6, FILE_SIZE);
    struct segment segs[] = {{6, 0, FILE_SIZE}, {6, 0, FILE_SIZE}};
    struct checker ck = {.fd = s, .segs = segs, .nsegs = 2};
    pthread_t t = checker_start(&ck);
    STEP("sendfile with an offset pointer");
    off_t off = 0;
    while (off < (off_t)FILE_SIZE) {
        off_t before = off;
        ssize_t n = sendfile(c, file, &off, 1 << 20);
        CHECK(n > 0, "sendfile returned %zd at offset %lld", n, (long long)before);
        CHECK(off == before + n, "offset advanced by %lld for %zd bytes",
              (long long)(off - before), n);
    }
    CHECK(lseek(file, 0, SEEK_CUR) == 0, "sendfile with an offset moved the file position");
    CHECK(sendfile(c, file, &off, 100) == 0, "sendfile at EOF returns 0");
    STEP("sendfile64 from the file position");
    size_t left = FILE_SIZE;
    while (left > 0) {
        ssize_t n = sendfile64(c, file, NULL, left);
        CHECK(n > 0, "sendfile64 returned %zd", n);
        left -= (size_t)n;
    }
    CHECK(lseek(file, 0, SEEK_CUR) == (off_t)FILE_SIZE, "file position not advanced");
    STEP("peer verifies both copies");
    OK(shutdown(c, SHUT_WR));
    pthread_join(t, NULL);
    STEP("sendfile errors");
    signal(SIGPIPE, SIG_IGN);
    off = 0;
    /* A socket cannot be read at an offset. */
    EXPECT_ERR(sendfile(c, s, &off, 10), ESPIPE);
    EXPECT_ERR(sendfile(c, file, &off, 10), EPIPE); /* write side shut down */
    close(file);
    close(c);
    close(s);
}

#define ROUNDS 10
#define SLICE (100 * 1024)
#define EDGE 3000

/* write + sendfile + splice + write, repeatedly: the peer must see exactly that order. */
static void t_sendfile_order(void) {
    int c, s, p[2];
    pl_tcp_pair(&c, &s);
    OK(pipe(p));
    int file = temp_file(6, ROUNDS * SLICE);
    struct segment segs[4 * ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        segs[4 * i] = (struct segment){100 + i, 0, EDGE};
        segs[4 * i + 1] = (struct segment){6, (uint64_t)i * SLICE, SLICE};
        segs[4 * i + 2] = (struct segment){300 + i, 0, EDGE};
        segs[4 * i + 3] = (struct segment){200 + i, 0, EDGE};
    }
    struct checker ck = {.fd = s, .segs = segs, .nsegs = 4 * ROUNDS};
    pthread_t t = checker_start(&ck);
    uint8_t edge[EDGE];
    for (int i = 0; i < ROUNDS; i++) {
        STEP("write, sendfile, splice, write");
        pl_fill(100 + i, 0, edge, EDGE);
        pl_write_all(c, edge, EDGE);
        off_t off = (off_t)i * SLICE;
        while (off < (off_t)(i + 1) * SLICE) {
            ssize_t n = sendfile(c, file, &off, (size_t)((off_t)(i + 1) * SLICE - off));
            CHECK(n > 0, "sendfile");
        }
        /* EDGE bytes fit in a pipe, so they are all there to splice. */
        pl_fill(300 + i, 0, edge, EDGE);
        pl_write_all(p[1], edge, EDGE);
        for (size_t left = EDGE; left > 0;) {
            ssize_t n = splice(p[0], NULL, c, NULL, left, 0);
            CHECK(n > 0, "splice pipe -> socket");
            left -= (size_t)n;
        }
        pl_fill(200 + i, 0, edge, EDGE);
        /* Alternate send() and writev() for the trailer: every path keeps the order. */
        if (i % 2) {
            CHECK(send(c, edge, EDGE, 0) == EDGE, "send");
        } else {
            struct iovec v[2] = {{edge, 1000}, {edge + 1000, EDGE - 1000}};
            CHECK(writev(c, v, 2) == EDGE, "writev");
        }
    }
    OK(shutdown(c, SHUT_WR));
    pthread_join(t, NULL);
    close(p[0]);
    close(p[1]);
    close(file);
    close(c);
    close(s);
}

static void t_halfclose(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    static uint8_t buf[100 * 1024];
    STEP("client sends, then shuts its write side");
    pl_fill(1, 0, buf, sizeof buf);
    pl_write_all(c, buf, sizeof buf);
    OK(shutdown(c, SHUT_WR));
    STEP("server reads everything, then EOF");
    memset(buf, 0, sizeof buf);
    pl_read_exact(s, buf, sizeof buf);
    pl_verify(1, 0, buf, sizeof buf);
    pl_expect_eof(s);
    pl_expect_eof(s); /* EOF is sticky */
    STEP("server can still answer");
    pl_fill(2, 0, buf, 50 * 1024);
    pl_write_all(s, buf, 50 * 1024);
    memset(buf, 0, sizeof buf);
    pl_read_exact(c, buf, 50 * 1024);
    pl_verify(2, 0, buf, 50 * 1024);
    close(s);
    pl_expect_eof(c);
    close(c);

    STEP("shutdown(SHUT_WR) takes effect after bytes still queued");
    pl_tcp_pair(&c, &s);
    pl_set_nonblock(c, 1);
    size_t total = 0;
    static uint8_t chunk[65536];
    for (;;) {
        pl_fill(3, total, chunk, sizeof chunk);
        ssize_t w = write(c, chunk, sizeof chunk);
        if (w < 0) {
            CHECK(errno == EAGAIN, "fill write");
            break;
        }
        total += (size_t)w;
        CHECK(total < (256u << 20), "connection never filled");
    }
    OK(shutdown(c, SHUT_WR));
    struct segment seg = {3, 0, total};
    struct checker ck = {.fd = s, .segs = &seg, .nsegs = 1};
    checker_run(&ck);
    printf("halfclose: %zu bytes queued at shutdown, all delivered before EOF\n", total);
    close(c);
    close(s);
}

static void t_shut_rd(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    STEP("recv after SHUT_RD returns 0 at once");
    OK(shutdown(s, SHUT_RD));
    char b[8];
    CHECK(recv(s, b, sizeof b, 0) == 0, "recv after SHUT_RD");
    CHECK(read(s, b, sizeof b) == 0, "read after SHUT_RD");
    struct pollfd f = {.fd = s, .events = POLLIN | POLLRDHUP};
    CHECK(poll(&f, 1, 0) == 1 && f.revents == (POLLIN | POLLRDHUP), "revents 0x%x", f.revents);
    STEP("the write side still works");
    pl_write_all(s, "still", 5);
    pl_read_exact(c, b, 5);
    CHECK(memcmp(b, "still", 5) == 0, "data after SHUT_RD");
    STEP("shutdown errors");
    EXPECT_ERR(shutdown(s, 7), EINVAL);
    int u = OK(socket(AF_INET, SOCK_STREAM, 0));
    EXPECT_ERR(shutdown(u, SHUT_RDWR), ENOTCONN);
    int p[2];
    OK(pipe(p));
    EXPECT_ERR(shutdown(p[0], SHUT_RDWR), ENOTSOCK);
    EXPECT_ERR(shutdown(-1, SHUT_RDWR), EBADF);
    close(p[0]);
    close(p[1]);
    close(u);
    close(c);
    close(s);
}

static volatile sig_atomic_t pipes;
static void on_pipe(int sig) {
    (void)sig;
    pipes++;
}

static void t_epipe(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    OK(shutdown(c, SHUT_WR));
    struct sigaction sa = {.sa_handler = on_pipe};
    sigemptyset(&sa.sa_mask);
    OK(sigaction(SIGPIPE, &sa, NULL));
    STEP("MSG_NOSIGNAL: EPIPE without a signal");
    EXPECT_ERR(send(c, "x", 1, MSG_NOSIGNAL), EPIPE);
    CHECK(pipes == 0, "SIGPIPE raised despite MSG_NOSIGNAL");
    STEP("plain write: EPIPE and SIGPIPE");
    EXPECT_ERR(write(c, "x", 1), EPIPE);
    CHECK(pipes == 1, "SIGPIPE delivered %d times", (int)pipes);
    STEP("SIGPIPE ignored: EPIPE from every send call");
    signal(SIGPIPE, SIG_IGN);
    EXPECT_ERR(send(c, "x", 1, 0), EPIPE);
    EXPECT_ERR(write(c, "x", 1), EPIPE);
    struct iovec v = {"x", 1};
    EXPECT_ERR(writev(c, &v, 1), EPIPE);
    struct msghdr mh = {.msg_iov = &v, .msg_iovlen = 1};
    EXPECT_ERR(sendmsg(c, &mh, 0), EPIPE);
    EXPECT_ERR(sendto(c, "x", 1, 0, NULL, 0), EPIPE);
    CHECK(pipes == 1, "a signal arrived while SIGPIPE was ignored");
    STEP("the other direction is unaffected");
    pl_write_all(s, "ok", 2);
    char b[2];
    pl_read_exact(c, b, 2);
    pl_expect_eof(s);
    close(c);
    close(s);
}

static void t_vec(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    static uint8_t out[71001], in[71001];
    pl_fill(8, 0, out, sizeof out);
    STEP("writev of three buffers");
    struct iovec wv[3] = {{out, 1}, {out + 1, 1000}, {out + 1001, 70000}};
    CHECK(writev(c, wv, 3) == 71001, "writev");
    STEP("readv into four buffers, short reads handled");
    static uint8_t r0[10], r1[500], r2[20000], r3[60000];
    size_t got = 0;
    while (got < 71001) {
        /* Rebuild the iovec array past what was already received. */
        struct iovec rv[4] = {{r0, 10}, {r1, 500}, {r2, 20000}, {r3, 60000}};
        size_t skip = got;
        int first = 0;
        while (skip >= rv[first].iov_len) {
            skip -= rv[first].iov_len;
            first++;
        }
        rv[first].iov_base = (char *)rv[first].iov_base + skip;
        rv[first].iov_len -= skip;
        ssize_t r = readv(s, rv + first, 4 - first);
        CHECK(r > 0, "readv");
        got += (size_t)r;
    }
    CHECK(got == 71001, "readv total %zu", got);
    memcpy(in, r0, 10);
    memcpy(in + 10, r1, 500);
    memcpy(in + 510, r2, 20000);
    memcpy(in + 20510, r3, 50491);
    pl_verify(8, 0, in, 71001);

    STEP("sendmsg with five buffers, one empty");
    struct iovec sv[5] = {{out, 5}, {out + 5, 0}, {out + 5, 95}, {out + 100, 900}, {out + 1000, 24}};
    struct msghdr sm = {.msg_iov = sv, .msg_iovlen = 5};
    CHECK(sendmsg(c, &sm, 0) == 1024, "sendmsg");
    STEP("recvmsg into three buffers");
    pl_wait_queued(s, 1024, 5000);
    uint8_t a[24], b[1000];
    struct iovec mv[2] = {{a, sizeof a}, {b, sizeof b}};
    struct sockaddr_storage name;
    struct msghdr rm = {.msg_name = &name, .msg_namelen = sizeof name, .msg_iov = mv,
                        .msg_iovlen = 2};
    CHECK(recvmsg(s, &rm, 0) == 1024, "recvmsg");
    CHECK(rm.msg_flags == 0, "msg_flags 0x%x", rm.msg_flags);
    CHECK(rm.msg_namelen == 0, "TCP recvmsg set msg_namelen to %u", rm.msg_namelen);
    pl_verify(8, 0, a, 24);
    pl_verify(8, 24, b, 1000);
    STEP("recvfrom on TCP reports no address");
    pl_write_all(c, "f", 1);
    socklen_t nl = sizeof name;
    CHECK(recvfrom(s, a, 1, 0, (struct sockaddr *)&name, &nl) == 1, "recvfrom");
    CHECK(nl == 0, "TCP recvfrom set addrlen to %u", nl);
    STEP("edge cases");
    CHECK(writev(c, wv, 0) == 0, "writev with no buffers");
    static struct iovec many[IOV_MAX + 1];
    for (int i = 0; i <= IOV_MAX; i++)
        many[i] = (struct iovec){out, 1};
    EXPECT_ERR(writev(c, many, IOV_MAX + 1), EINVAL);
    CHECK(writev(c, many, IOV_MAX) == IOV_MAX, "writev with IOV_MAX buffers");
    pl_wait_queued(s, IOV_MAX, 5000);
    close(c);
    close(s);
}

static void t_peek(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    char b[100];
    STEP("peek on an empty socket");
    EXPECT_ERR(recv(s, b, sizeof b, MSG_PEEK | MSG_DONTWAIT), EAGAIN);
    STEP("peek, then read the same bytes");
    pl_write_all(c, "hello world", 11);
    pl_wait_queued(s, 11, 5000);
    CHECK(recv(s, b, 5, MSG_PEEK) == 5 && memcmp(b, "hello", 5) == 0, "peek 5");
    memset(b, 0, sizeof b);
    CHECK(recv(s, b, sizeof b, MSG_PEEK) == 11 && memcmp(b, "hello world", 11) == 0, "peek all");
    int n = -1;
    OK(ioctl(s, FIONREAD, &n));
    CHECK(n == 11, "peek consumed data: FIONREAD %d", n);
    memset(b, 0, sizeof b);
    CHECK(read(s, b, sizeof b) == 11 && memcmp(b, "hello world", 11) == 0, "read after peek");
    STEP("peek gathers across separate writes");
    pl_write_all(c, "ab", 2);
    pl_write_all(c, "cd", 2);
    pl_write_all(c, "ef", 2);
    pl_wait_queued(s, 6, 5000);
    CHECK(recv(s, b, sizeof b, MSG_PEEK) == 6 && memcmp(b, "abcdef", 6) == 0, "peek 3 writes");
    CHECK(recv(s, b, 3, 0) == 3 && memcmp(b, "abc", 3) == 0, "read 3");
    CHECK(recv(s, b, sizeof b, MSG_PEEK) == 3 && memcmp(b, "def", 3) == 0, "peek the rest");
    CHECK(recv(s, b, sizeof b, 0) == 3 && memcmp(b, "def", 3) == 0, "read the rest");
    close(c);
    close(s);
}

struct trickle {
    int fd;
    size_t total, chunk;
};

static void *trickle_run(void *arg) {
    struct trickle *t = arg;
    static uint8_t buf[4096];
    for (size_t off = 0; off < t->total; off += t->chunk) {
        size_t n = t->total - off < t->chunk ? t->total - off : t->chunk;
        pl_fill(12, off, buf, n);
        pl_write_all(t->fd, buf, n);
        pl_sleep_ms(1);
    }
    return NULL;
}

static void t_waitall(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    STEP("MSG_WAITALL collects many small writes");
    struct trickle tr = {.fd = c, .total = 100 * 1024, .chunk = 1000};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, trickle_run, &tr) == 0, "pthread_create");
    static uint8_t buf[100 * 1024];
    ssize_t r = recv(s, buf, sizeof buf, MSG_WAITALL);
    CHECK(r == (ssize_t)sizeof buf, "MSG_WAITALL returned %zd of %zu", r, sizeof buf);
    pl_verify(12, 0, buf, sizeof buf);
    pthread_join(t, NULL);
    STEP("MSG_WAITALL stops at EOF with what arrived");
    pl_write_all(c, buf, 500);
    OK(shutdown(c, SHUT_WR));
    r = recv(s, buf, 1000, MSG_WAITALL);
    CHECK(r == 500, "MSG_WAITALL before EOF returned %zd", r);
    CHECK(recv(s, buf, 1000, MSG_WAITALL) == 0, "then EOF");
    close(c);
    close(s);
}

static void t_dontwait(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    char b;
    STEP("MSG_DONTWAIT on a blocking socket");
    EXPECT_ERR(recv(s, &b, 1, MSG_DONTWAIT), EAGAIN);
    CHECK(!(OK(fcntl(s, F_GETFL)) & O_NONBLOCK), "MSG_DONTWAIT changed the file flags");
    STEP("send(MSG_DONTWAIT) until the connection is full");
    static uint8_t chunk[65536];
    size_t total = 0;
    for (;;) {
        pl_fill(13, total, chunk, sizeof chunk);
        ssize_t w = send(c, chunk, sizeof chunk, MSG_DONTWAIT);
        if (w < 0) {
            CHECK(errno == EAGAIN, "send(MSG_DONTWAIT)");
            break;
        }
        total += (size_t)w;
        CHECK(total < (256u << 20), "connection never filled");
    }
    CHECK(!(OK(fcntl(c, F_GETFL)) & O_NONBLOCK), "MSG_DONTWAIT changed the file flags");
    STEP("every accepted byte arrives");
    struct segment seg = {13, 0, total};
    struct checker ck = {.fd = s, .segs = &seg, .nsegs = 1};
    OK(shutdown(c, SHUT_WR));
    checker_run(&ck);
    close(c);
    close(s);
}

static void t_mmsg(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    static uint8_t out[2100];
    pl_fill(14, 0, out, sizeof out);
    STEP("sendmmsg: three messages of two buffers");
    struct iovec v[6];
    struct mmsghdr mm[3];
    memset(mm, 0, sizeof mm);
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t a = 100 * (size_t)(2 * i + 1), b = 100 * (size_t)(2 * i + 2);
        v[2 * i] = (struct iovec){out + off, a};
        v[2 * i + 1] = (struct iovec){out + off + a, b};
        off += a + b;
        mm[i].msg_hdr.msg_iov = &v[2 * i];
        mm[i].msg_hdr.msg_iovlen = 2;
    }
    CHECK(sendmmsg(c, mm, 3, 0) == 3, "sendmmsg");
    CHECK(mm[0].msg_len == 300 && mm[1].msg_len == 700 && mm[2].msg_len == 1100,
          "msg_len %u %u %u", mm[0].msg_len, mm[1].msg_len, mm[2].msg_len);
    STEP("recvmmsg: each entry takes the next bytes of the stream");
    pl_wait_queued(s, 2100, 5000);
    static uint8_t in[4][1000];
    struct iovec rv[4];
    struct mmsghdr rm[4];
    memset(rm, 0, sizeof rm);
    for (int i = 0; i < 4; i++) {
        rv[i] = (struct iovec){in[i], sizeof in[i]};
        rm[i].msg_hdr.msg_iov = &rv[i];
        rm[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(s, rm, 4, MSG_DONTWAIT, NULL);
    CHECK(n == 3, "recvmmsg returned %d", n);
    CHECK(rm[0].msg_len == 1000 && rm[1].msg_len == 1000 && rm[2].msg_len == 100,
          "msg_len %u %u %u", rm[0].msg_len, rm[1].msg_len, rm[2].msg_len);
    pl_verify(14, 0, in[0], 1000);
    pl_verify(14, 1000, in[1], 1000);
    pl_verify(14, 2000, in[2], 100);
    STEP("recvmmsg with MSG_WAITFORONE returns after the first message");
    pl_write_all(c, out, 10);
    n = recvmmsg(s, rm, 4, MSG_WAITFORONE, NULL);
    CHECK(n == 1 && rm[0].msg_len == 10, "recvmmsg returned %d (len %u)", n, rm[0].msg_len);
    STEP("recvmmsg on an empty socket");
    EXPECT_ERR(recvmmsg(s, rm, 4, MSG_DONTWAIT, NULL), EAGAIN);
    close(c);
    close(s);
}

/* Bytes accepted before close() are still delivered, followed by EOF. */
static void t_close_drain(void) {
    int c, s;
    STEP("blocking writer closes right after its last write");
    pl_tcp_pair(&c, &s);
    struct segment seg = {15, 0, 4u << 20};
    struct checker ck = {.fd = s, .segs = &seg, .nsegs = 1, .start_delay_ms = 50};
    pthread_t t = checker_start(&ck);
    static uint8_t big[4u << 20];
    pl_fill(15, 0, big, sizeof big);
    pl_write_all(c, big, sizeof big);
    close(c);
    pthread_join(t, NULL);
    close(s);

    STEP("non-blocking writer fills the connection, then closes");
    pl_tcp_pair(&c, &s);
    pl_set_nonblock(c, 1);
    size_t total = 0;
    for (;;) {
        pl_fill(16, total, big, 65536);
        ssize_t w = write(c, big, 65536);
        if (w < 0) {
            CHECK(errno == EAGAIN, "fill write");
            break;
        }
        total += (size_t)w;
        CHECK(total < (256u << 20), "connection never filled");
    }
    close(c);
    struct segment seg2 = {16, 0, total};
    struct checker ck2 = {.fd = s, .segs = &seg2, .nsegs = 1};
    checker_run(&ck2);
    printf("close_drain: %zu bytes pending at close, all delivered\n", total);
    close(s);
}

static const struct pl_case cases[] = {
    {"sendfile", t_sendfile},
    {"sendfile_order", t_sendfile_order},
    {"halfclose", t_halfclose},
    {"shut_rd", t_shut_rd},
    {"epipe", t_epipe},
    {"vec", t_vec},
    {"peek", t_peek},
    {"waitall", t_waitall},
    {"dontwait", t_dontwait},
    {"mmsg", t_mmsg},
    {"close_drain", t_close_drain},
    {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_io", cases); }
