/*
 * Regression: sendfile_et_backpressure_completes.
 *
 * An edge-triggered epoll loop (the nginx pattern) sends a large file with sendfile()
 * on a non-blocking socket to a slow reader. sendfile stops short when the socket
 * buffer fills; the loop then waits for EPOLLOUT. Under the shim the socket's
 * readiness once came from the shim's (empty) send queue, so no new EPOLLOUT edge was
 * ever reported and the transfer stalled. The reader checks every byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define SIZE (16 << 20)

static void die(const char *what) {
    fprintf(stderr, "FAIL rg_sendfile_et: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint8_t pattern(size_t i) { return (uint8_t)(i * 2654435761u >> 13); }

static int reader_fd;

static void *reader(void *arg) {
    (void)arg;
    uint8_t buf[4096];
    size_t got = 0;
    for (;;) {
        /* Slow at first, so the sender's socket buffer fills and sendfile stops short. */
        if (got < (4 << 20))
            usleep(200);
        ssize_t n = read(reader_fd, buf, sizeof buf);
        if (n < 0)
            die("read");
        if (n == 0)
            break;
        for (ssize_t k = 0; k < n; k++)
            if (buf[k] != pattern(got + (size_t)k)) {
                fprintf(stderr, "FAIL rg_sendfile_et: byte %zu differs\n", got + (size_t)k);
                exit(1);
            }
        got += (size_t)n;
    }
    if (got != SIZE) {
        fprintf(stderr, "FAIL rg_sendfile_et: received %zu of %d bytes\n", got, SIZE);
        exit(1);
    }
    return NULL;
}

int main(void) {
    alarm(30);
    char path[] = "/tmp/rg_sendfile_et.XXXXXX";
    int file = mkstemp(path);
    if (file < 0)
        die("mkstemp");
    unlink(path);
    uint8_t *data = malloc(SIZE);
    for (size_t i = 0; i < SIZE; i++)
        data[i] = pattern(i);
    if (write(file, data, SIZE) != SIZE)
        die("write file");

    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al))
        die("listen");
    reader_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(reader_fd, (struct sockaddr *)&a, sizeof a))
        die("connect");
    int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
    if (s < 0)
        die("accept");
    int small = 64 * 1024;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);

    pthread_t t;
    pthread_create(&t, NULL, reader, NULL);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev))
        die("epoll_ctl");
    off_t off = 0;
    int waits = 0;
    while (off < SIZE) {
        ssize_t n = sendfile(s, file, &off, SIZE - (size_t)off);
        if (n < 0 && errno != EAGAIN)
            die("sendfile");
        if (off >= SIZE)
            break;
        /* Short or EAGAIN: wait for the next EPOLLOUT edge, as nginx does. */
        struct epoll_event out;
        int r = epoll_wait(ep, &out, 1, 10000);
        if (r < 0 && errno != EINTR)
            die("epoll_wait");
        if (r == 0) {
            fprintf(stderr, "FAIL rg_sendfile_et: no EPOLLOUT within 10 s at offset %lld\n", (long long)off);
            return 1;
        }
        waits++;
    }
    close(s);
    pthread_join(t, NULL);
    printf("ok: %d bytes, %d EPOLLOUT waits\n", SIZE, waits);
    return 0;
}
