/* echo_uring.c - native io_uring 1 KiB echo server: the upper bound for the shim.
 *
 *   echo_uring ADDR PORT
 *
 * One thread, one ring with SINGLE_ISSUER | DEFER_TASKRUN (and COOP_TASKRUN|TASKRUN_FLAG
 * as a fallback before 6.1), multishot accept, multishot recv into a provided-buffer ring,
 * at most one send in flight per connection (the rest waits in a per-connection buffer
 * and goes out when that send completes), and exactly one io_uring_enter per loop turn
 * (io_uring_submit_and_wait: submit + wait + run deferred task work).
 * Built with liburing (Debian liburing-dev). Exits on SIGTERM/SIGINT. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBUF 4096      /* provided buffers (power of two) */
#define BUFLEN 4096    /* bytes each */
#define BGID 1
#define OUTCAP 65536   /* per-connection pending output */
#define MAXFD 65536

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

struct conn {
    uint32_t gen;
    int open, recv_armed, send_inflight, eof;
    size_t off, len;
    char *out;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static struct conn conns[MAXFD];
static volatile sig_atomic_t stop;
static int lfd;
static unsigned long enters;

static void on_sig(int s) { (void)s; stop = 1; }

static uint64_t ud(int op, int fd, uint32_t gen) {
    return ((uint64_t)(uint32_t)fd << 32) | ((uint64_t)(gen & 0xffffff) << 8) | (uint64_t)op;
}

static struct io_uring_sqe *sqe_get(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) { /* SQ full: submit what we have, then take one */
        io_uring_submit(&ring);
        enters++;
        s = io_uring_get_sqe(&ring);
    }
    return s;
}

static void arm_accept(void) {
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_multishot_accept(s, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, ud(OP_ACCEPT, lfd, 0));
}

static void arm_recv(int fd) {
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, ud(OP_RECV, fd, conns[fd].gen));
    conns[fd].recv_armed = 1;
}

static void arm_send(int fd) {
    struct conn *c = &conns[fd];
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_send(s, fd, c->out + c->off, c->len - c->off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, ud(OP_SEND, fd, c->gen));
    c->send_inflight = 1;
}

static void maybe_close(int fd) {
    struct conn *c = &conns[fd];
    if (c->open && c->eof && !c->recv_armed && !c->send_inflight) {
        close(fd);
        c->open = 0;
        c->gen++;
    }
}

static void recycle(int bid) {
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFLEN, BUFLEN, bid, io_uring_buf_ring_mask(NBUF), 0);
    io_uring_buf_ring_advance(br, 1);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]); return 2; }
    struct sigaction sa = {0};
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    if (listen(lfd, 4096) < 0) { perror("listen"); return 1; }

    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = 16384;
    int r = io_uring_queue_init_params(1024, &ring, &p);
    if (r < 0) { /* pre-6.1 fallback */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = 16384;
        r = io_uring_queue_init_params(1024, &ring, &p);
        if (r < 0) { fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-r)); return 1; }
        fprintf(stderr, "echo_uring: DEFER_TASKRUN unavailable, using COOP_TASKRUN\n");
    }
    io_uring_register_ring_fd(&ring);

    size_t brsz = NBUF * sizeof(struct io_uring_buf);
    br = mmap(NULL, brsz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    bufs = malloc((size_t)NBUF * BUFLEN);
    if (br == MAP_FAILED || !bufs) { perror("buffers"); return 1; }
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = BGID};
    r = io_uring_register_buf_ring(&ring, &reg, 0);
    if (r < 0) { fprintf(stderr, "register_buf_ring: %s\n", strerror(-r)); return 1; }
    for (int i = 0; i < NBUF; i++)
        io_uring_buf_ring_add(br, bufs + (size_t)i * BUFLEN, BUFLEN, i, io_uring_buf_ring_mask(NBUF), i);
    io_uring_buf_ring_advance(br, NBUF);

    arm_accept();
    fprintf(stderr, "echo_uring: listening on %s:%s\n", argv[1], argv[2]);

    while (!stop) {
        r = io_uring_submit_and_wait(&ring, 1); /* the one enter of this turn */
        enters++;
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-r));
            return 1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t u = cqe->user_data;
            int op = (int)(u & 0xff);
            int fd = (int)(u >> 32);
            uint32_t gen = (uint32_t)((u >> 8) & 0xffffff);
            int res = cqe->res;
            struct conn *c = (fd >= 0 && fd < MAXFD) ? &conns[fd] : NULL;
            if (op == OP_ACCEPT) {
                if (res >= 0) {
                    if (res >= MAXFD) { close(res); }
                    else {
                        struct conn *n = &conns[res];
                        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        if (!n->out) n->out = malloc(OUTCAP);
                        n->open = 1; n->eof = 0; n->recv_armed = 0; n->send_inflight = 0;
                        n->off = n->len = 0;
                        arm_recv(res);
                    }
                }
                if (!(cqe->flags & IORING_CQE_F_MORE) && !stop) arm_accept();
                continue;
            }
            if (!c || (gen != (c->gen & 0xffffff))) { /* stale: give the buffer back */
                if (cqe->flags & IORING_CQE_F_BUFFER) recycle(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                continue;
            }
            if (op == OP_RECV) {
                if (cqe->flags & IORING_CQE_F_BUFFER) {
                    int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                    if (res > 0) {
                        if (c->len + (size_t)res > OUTCAP) { /* peer not reading: give up on it */
                            c->eof = 1;
                            shutdown(fd, SHUT_RDWR);
                        } else {
                            memcpy(c->out + c->len, bufs + (size_t)bid * BUFLEN, (size_t)res);
                            c->len += (size_t)res;
                            if (!c->send_inflight) arm_send(fd);
                        }
                    }
                    recycle(bid);
                }
                if (res == 0 || (res < 0 && res != -ENOBUFS)) c->eof = 1;
                if (!(cqe->flags & IORING_CQE_F_MORE)) {
                    c->recv_armed = 0;
                    if (!c->eof) arm_recv(fd); /* multishot ended (or ENOBUFS): re-arm */
                }
                maybe_close(fd);
            } else if (op == OP_SEND) {
                c->send_inflight = 0;
                if (res < 0) {
                    c->eof = 1;
                    c->off = c->len = 0;
                } else {
                    c->off += (size_t)res;
                    if (c->off == c->len) c->off = c->len = 0;
                    else arm_send(fd); /* short send or more data queued meanwhile */
                }
                maybe_close(fd);
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
    fprintf(stderr, "echo_uring: %lu enters\n", enters);
    return 0;
}
