/*
 * Regression: corked_response_leaves_in_one_segment.
 *
 * nginx with "sendfile on; tcp_nopush on;" answers each keepalive request with
 * TCP_CORK on, writev(header), sendfile(body), TCP_CORK off, then epoll_wait. Under
 * the shim the header and the body were queued and sent as two SENDMSGs after the
 * uncork had already reached the kernel: the header left alone, and Nagle held the
 * body until the client's delayed ACK, 40 ms per response. The kernel (and the shim
 * now) sends header and body as one segment.
 *
 * The client side uses raw system calls so its socket never enters the shim: it
 * checks that each response arrives whole in its first read, which holds on the
 * kernel stack because of the cork.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <arpa/inet.h>

#define ROUNDS 40
#define HEADER 180
#define BODY 1024

static void die(const char *what) {
    fprintf(stderr, "FAIL rg_cork_split: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int file_fd;
static int split_responses;

static void *client(void *arg) {
    int port = *(int *)arg;
    int fd = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("client socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (syscall(SYS_connect, fd, &a, sizeof a) < 0)
        die("client connect");
    char buf[8192];
    for (int round = 0; round < ROUNDS; round++) {
        if (syscall(SYS_write, fd, "GET", 3) != 3)
            die("client write");
        long got = 0, reads = 0;
        while (got < HEADER + BODY) {
            long n = syscall(SYS_read, fd, buf + got, sizeof buf - (size_t)got);
            if (n <= 0)
                die("client read");
            got += n;
            reads++;
        }
        if (got != HEADER + BODY) {
            fprintf(stderr, "FAIL rg_cork_split: response %d has %ld bytes\n", round, got);
            exit(1);
        }
        for (long k = 0; k < got; k++)
            if (buf[k] != (char)(k < HEADER ? 'h' : 'a' + (k - HEADER) % 26)) {
                fprintf(stderr, "FAIL rg_cork_split: response %d byte %ld differs\n", round, k);
                exit(1);
            }
        if (reads > 1)
            split_responses++;
    }
    syscall(SYS_close, fd);
    return NULL;
}

static void set_cork(int fd, int on) {
    if (setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) < 0)
        die("TCP_CORK");
}

int main(void) {
    char path[] = "/tmp/rg_cork_split.XXXXXX";
    file_fd = mkstemp(path);
    if (file_fd < 0)
        die("mkstemp");
    unlink(path);
    char body[BODY];
    for (int k = 0; k < BODY; k++)
        body[k] = (char)('a' + k % 26);
    if (write(file_fd, body, BODY) != BODY)
        die("file write");

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 8) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        die("listen");
    int port = ntohs(a.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, client, &port);

    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0)
        die("accept");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
        die("epoll_ctl");
    char header[HEADER];
    memset(header, 'h', sizeof header);
    for (int round = 0; round < ROUNDS;) {
        if (epoll_wait(ep, &ev, 1, 5000) != 1)
            die("epoll_wait for the request");
        char req[16];
        ssize_t n = 1;
        /* After the last response the client may close at once: stop reading then. */
        while (round < ROUNDS && (n = read(c, req, sizeof req)) > 0) {
            set_cork(c, 1);
            struct iovec iov = {.iov_base = header, .iov_len = HEADER};
            if (writev(c, &iov, 1) != HEADER)
                die("writev header");
            if (round % 2 == 0) {
                off_t off = 0;
                if (sendfile(c, file_fd, &off, BODY) != BODY)
                    die("sendfile body");
            } else if (write(c, body, BODY) != BODY) {
                die("write body");
            }
            set_cork(c, 0);
            round++;
        }
        if (round < ROUNDS && (n == 0 || (n < 0 && errno != EAGAIN)))
            die("read request");
    }
    pthread_join(t, NULL);
    if (split_responses > 0) {
        fprintf(stderr, "FAIL rg_cork_split: %d of %d corked responses arrived split\n",
                split_responses, ROUNDS);
        return 1;
    }
    printf("ok rg_cork_split: %d corked responses, each in one segment\n", ROUNDS);
    return 0;
}
