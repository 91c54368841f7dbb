/*
 * Regression: inherited_listener_is_accelerated.
 *
 * nginx's binary upgrade (USR2) execs the new binary with the listening sockets left
 * open; the new image's shim starts with an empty fd table, so it did not know them:
 * accept() passed through, and every connection of the upgraded nginx stayed on the
 * kernel path although its workers carried the shim. The shim now adopts an untracked
 * TCP listener at its first accept.
 *
 * A forked child creates the listener with raw system calls (as a process without the
 * shim would) and execs this program in "serve" mode with the fd number; that image
 * accepts through libc, echoes 256 KiB under epoll and, when the shim is loaded, checks
 * that the connection went onto io_uring. The parent is the client, on raw system calls.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOTAL (256 * 1024)

static void die(const char *what) {
    fprintf(stderr, "FAIL rg_inherited_listener: %s: %s\n", what, strerror(errno));
    exit(1);
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 131 + 7); }

static int serve(int ls) {
    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0)
        die("accept4 on the inherited listener");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
        die("epoll");
    static unsigned char buf[65536];
    size_t echoed = 0;
    for (;;) {
        int n = epoll_wait(ep, &ev, 1, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            die("epoll_wait (nothing within 10 s)");
        ssize_t r = read(c, buf, sizeof buf);
        if (r < 0 && errno == EAGAIN)
            continue;
        if (r < 0)
            die("read");
        if (r == 0)
            break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(c, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EAGAIN) {
                struct epoll_event out = {.events = EPOLLOUT, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c, &out);
                epoll_wait(ep, &out, 1, 10000);
                epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev);
                continue;
            }
            if (w < 0)
                die("write");
            off += w;
        }
        echoed += (size_t)r;
    }
    uint64_t (*counter)(const char *) = (uint64_t(*)(const char *))dlsym(RTLD_DEFAULT, "ringshim_counter");
    if (counter && getenv("LD_PRELOAD") && counter("sockets_on_uring") < 1) {
        fprintf(stderr, "FAIL rg_inherited_listener: the connection accepted on the inherited "
                        "listener is not on io_uring (sockets_on_uring %llu, accepts %llu)\n",
                (unsigned long long)counter("sockets_on_uring"), (unsigned long long)counter("accepts"));
        return 1;
    }
    if (shutdown(c, SHUT_WR) < 0)
        die("shutdown");
    close(c);
    printf("echoed %zu bytes\n", echoed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(atoi(argv[2]));

    int ls = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (ls < 0 || syscall(SYS_bind, ls, &a, sizeof a) < 0 || syscall(SYS_listen, ls, 8) < 0 ||
        syscall(SYS_getsockname, ls, &a, &alen) < 0)
        die("listener");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        char fdtext[16];
        snprintf(fdtext, sizeof fdtext, "%d", ls);
        execl("/proc/self/exe", argv[0], "serve", fdtext, (char *)NULL);
        die("exec");
    }
    syscall(SYS_close, ls);

    int s = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (s < 0 || syscall(SYS_connect, s, &a, sizeof a) < 0)
        die("connect");
    static unsigned char out[TOTAL], in[TOTAL];
    for (size_t i = 0; i < TOTAL; i++)
        out[i] = pattern(i);
    /* The whole payload fits the two sides' buffers plus the echo in flight only if the
     * reader keeps up; alternate sends and receives in chunks to never deadlock. */
    size_t sent = 0, got = 0;
    while (got < TOTAL) {
        if (sent < TOTAL) {
            size_t n = TOTAL - sent < 16384 ? TOTAL - sent : 16384;
            ssize_t w = syscall(SYS_sendto, s, out + sent, n, 0, NULL, 0);
            if (w < 0)
                die("send");
            sent += (size_t)w;
            if (sent == TOTAL && syscall(SYS_shutdown, s, SHUT_WR) < 0)
                die("client shutdown");
        }
        while (got < sent) {
            ssize_t r = syscall(SYS_recvfrom, s, in + got, TOTAL - got, 0, NULL, NULL);
            if (r < 0)
                die("recv");
            if (r == 0) {
                errno = 0;
                die("echo ended early");
            }
            got += (size_t)r;
        }
    }
    for (size_t i = 0; i < TOTAL; i++) {
        if (in[i] != out[i]) {
            fprintf(stderr, "FAIL rg_inherited_listener: echo differs at byte %zu\n", i);
            return 1;
        }
    }
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        die("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "FAIL rg_inherited_listener: the server exited with status %#x\n", st);
        return 1;
    }
    printf("ok: %d bytes echoed through a listener inherited across exec\n", TOTAL);
    return 0;
}
