/*
 * Regression: reply_written_before_exit_reaches_the_peer.
 *
 * An event-loop process answers one request and calls exit(0) at once (a CLI-style
 * server, a worker on its last request). Under the shim the reply was still queued
 * for the loop's next wait, and exit() runs no thread-exit destructors: the bytes died
 * with the process. The shim now flushes the exiting thread's queue from atexit.
 *
 * The server is a forked child (so it can exit while the test keeps running); the
 * client is the parent, on raw system calls so its socket stays out of the shim.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#define REPLY (200 * 1024)

static void die(const char *what) {
    fprintf(stderr, "FAIL rg_exit_flush: %s: %s\n", what, strerror(errno));
    exit(1);
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 131 + 7); }

static void serve(int ls) {
    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0)
        die("accept");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0 || epoll_wait(ep, &ev, 1, 5000) != 1)
        die("wait for the request");
    char req[8];
    if (read(c, req, sizeof req) <= 0)
        die("read request");
    static unsigned char reply[REPLY];
    for (size_t i = 0; i < REPLY; i++)
        reply[i] = pattern(i);
    size_t sent = 0;
    while (sent < REPLY) {
        ssize_t n = write(c, reply + sent, REPLY - sent);
        if (n > 0) {
            sent += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct epoll_event out = {.events = EPOLLOUT, .data.fd = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c, &out);
            epoll_wait(ep, &out, 1, 5000);
        } else {
            die("write reply");
        }
    }
    exit(0); /* no close, no further wait: exit() must not lose the queued reply */
}

int main(void) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        die("listen");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0)
        serve(ls);

    int fd = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || syscall(SYS_connect, fd, &a, sizeof a) < 0)
        die("client connect");
    if (syscall(SYS_write, fd, "GO", 2) != 2)
        die("client write");
    static unsigned char buf[65536];
    size_t got = 0;
    for (;;) {
        long n = syscall(SYS_read, fd, buf, sizeof buf);
        if (n < 0)
            die("client read");
        if (n == 0)
            break;
        for (long k = 0; k < n; k++)
            if (buf[k] != pattern(got + (size_t)k)) {
                fprintf(stderr, "FAIL rg_exit_flush: byte %zu differs\n", got + (size_t)k);
                return 1;
            }
        got += (size_t)n;
    }
    int status = 0;
    if (syscall(SYS_wait4, child, &status, 0, NULL) != child || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "FAIL rg_exit_flush: server exited abnormally (status %d)\n", status);
        return 1;
    }
    if (got != REPLY) {
        fprintf(stderr, "FAIL rg_exit_flush: received %zu of %d bytes before end-of-file\n", got, REPLY);
        return 1;
    }
    printf("ok rg_exit_flush: %d bytes written just before exit() all arrived\n", REPLY);
    return 0;
}
