/* Shared helpers of the preload test programs (tests/progs/pl_*.c).
 *
 * Every program is self-checking: it exits 0 on success; on failure it prints one line
 * starting with "FAIL" (the step, the expectation, errno) to stderr and exits 1. Exit
 * status 77 means "cannot run here" (e.g. no IPv6), which the Rust harness treats as a
 * skip only if the program also skips without the shim.
 *
 * Nothing may hang: pl_init() starts a watchdog thread that ends the process (exit 3)
 * after PL_WATCHDOG_SECS, naming the step that was running. A thread is used rather than
 * alarm() because several tests install their own SIGALRM handlers; the watchdog blocks
 * every signal, so process-directed signals still reach the thread under test.
 *
 * Only loopback addresses with ephemeral ports (bind port 0 + getsockname) are used,
 * except that the ustack runs of tests/preload.rs move TCP off loopback with three IPv4
 * variables (unset: 127.0.0.1): PL_ADDR_LISTEN is what TCP listeners and port holders
 * bind, PL_ADDR_CONNECT what TCP clients connect to, PL_ADDR_CLIENT the local address a
 * client then has. UDP and unix sockets never move.
 *
 * Helpers are `static inline` so that a program using only some of them still compiles
 * without -Wunused-function warnings.
 */
#ifndef PL_UTIL_H
#define PL_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PL_WATCHDOG_SECS 10
#define PL_SKIP 77

/* The step currently running, reported by the watchdog and by failures. */
static const char *volatile pl_step = "start";
static const char *pl_prog = "prog";

#define STEP(s) (pl_step = (s))

static void pl_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
static void pl_fail(const char *file, int line, const char *fmt, ...) {
    int saved = errno;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAIL %s [pid %d] step '%s' at %s:%d: %s (errno %d: %s)\n", pl_prog,
            (int)getpid(), pl_step, file, line, msg, saved, strerror(saved));
    fflush(stderr);
    /* _exit: a failed check must not run atexit handlers that might block. */
    _exit(1);
}

#define FAIL(...) pl_fail(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...) \
    do {                 \
        if (!(cond))     \
            FAIL(__VA_ARGS__); \
    } while (0)
/* A call that must succeed (return >= 0). */
#define OK(expr)                                           \
    ({                                                     \
        __typeof__(expr) pl_r_ = (expr);                   \
        if (pl_r_ < 0)                                     \
            FAIL("%s returned %lld", #expr, (long long)pl_r_); \
        pl_r_;                                             \
    })
/* A call that must fail with -1 and the given errno. */
#define EXPECT_ERR(expr, err)                                                       \
    do {                                                                            \
        errno = 0;                                                                  \
        long long pl_r_ = (long long)(expr);                                        \
        int pl_e_ = errno;                                                          \
        if (pl_r_ != -1 || pl_e_ != (err))                                          \
            FAIL("%s: expected -1/%s, got %lld/%s", #expr, #err, pl_r_, strerror(pl_e_)); \
    } while (0)

static inline void *pl_watchdog(void *arg) {
    (void)arg;
    struct timespec ts = {PL_WATCHDOG_SECS, 0};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    fprintf(stderr, "FAIL %s [pid %d] watchdog: step '%s' still running after %d s\n", pl_prog,
            (int)getpid(), pl_step, PL_WATCHDOG_SECS);
    _exit(3);
    return NULL;
}

/* Starts the watchdog. Call at the start of main() and again in every fork() child
 * (threads do not survive fork). */
static inline void pl_watchdog_start(void) {
    sigset_t all, old;
    sigfillset(&all);
    /* The new thread inherits the full mask, so it never takes a signal meant for others. */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    if (pthread_create(&t, NULL, pl_watchdog, NULL) != 0)
        FAIL("pthread_create(watchdog)");
    pthread_detach(t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static inline void pl_init(const char *prog) {
    pl_prog = prog;
    /* Unbuffered output: a process killed by the harness still leaves its messages. */
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    pl_watchdog_start();
}

/* For fork() children: die with the parent and get a watchdog of their own. */
static inline void pl_child_init(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    pl_watchdog_start();
}

static inline double pl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU seconds (user + system, all threads) used by this process so far. */
static inline double pl_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static inline void pl_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline socklen_t pl_loopback(int family, uint16_t port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons(port);
        return sizeof *a;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->sin_port = htons(port);
    return sizeof *a;
}

/* One of the PL_ADDR_* variables (see the top), or 127.0.0.1. */
static inline struct in_addr pl_env_addr(const char *var) {
    struct in_addr a = {htonl(INADDR_LOOPBACK)};
    const char *v = getenv(var);
    if (v && inet_pton(AF_INET, v, &a) != 1) {
        fprintf(stderr, "%s='%s' is not an IPv4 address\n", var, v);
        exit(2);
    }
    return a;
}

/* Where a TCP listener (or a port holder) of `family` binds, port 0. */
static inline socklen_t pl_tcp_bind_addr(int family, struct sockaddr_storage *ss) {
    socklen_t len = pl_loopback(family, 0, ss);
    if (family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_addr = pl_env_addr("PL_ADDR_LISTEN");
    return len;
}

/* Where a TCP client connects to reach the listener on `port`. */
static inline socklen_t pl_tcp_connect_addr(int family, uint16_t port, struct sockaddr_storage *ss) {
    socklen_t len = pl_loopback(family, port, ss);
    if (family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_addr = pl_env_addr("PL_ADDR_CONNECT");
    return len;
}

static inline uint16_t pl_port_of(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    OK(getsockname(fd, (struct sockaddr *)&ss, &len));
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}

/* A TCP listener on the loopback address of `family`, ephemeral port, given socket flags
 * (SOCK_NONBLOCK...). Exits with PL_SKIP when the family is unusable on this host. */
static inline int pl_listen(int family, int sock_flags) {
    int fd = socket(family, SOCK_STREAM | sock_flags, 0);
    if (fd < 0 && family == AF_INET6 && errno == EAFNOSUPPORT) {
        printf("SKIP: no IPv6\n");
        exit(PL_SKIP);
    }
    CHECK(fd >= 0, "socket(listener)");
    int one = 1;
    OK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    struct sockaddr_storage ss;
    socklen_t len = pl_tcp_bind_addr(family, &ss);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        if (family == AF_INET6 && (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT)) {
            printf("SKIP: ::1 unavailable\n");
            exit(PL_SKIP);
        }
        FAIL("bind(loopback, 0)");
    }
    OK(listen(fd, 64));
    return fd;
}

/* A blocking connect to the listener `lfd` (same family). */
static inline int pl_connect_to(int lfd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    OK(getsockname(lfd, (struct sockaddr *)&ss, &len));
    len = pl_tcp_connect_addr(ss.ss_family, pl_port_of(lfd), &ss);
    int fd = OK(socket(ss.ss_family, SOCK_STREAM, 0));
    OK(connect(fd, (struct sockaddr *)&ss, len));
    return fd;
}

/* A connected TCP pair over loopback: *cli from connect(), *srv from accept(). */
static inline void pl_tcp_pair_family(int family, int *cli, int *srv) {
    int lfd = pl_listen(family, 0);
    *cli = pl_connect_to(lfd);
    *srv = OK(accept(lfd, NULL, NULL));
    close(lfd);
}

static inline void pl_tcp_pair(int *cli, int *srv) { pl_tcp_pair_family(AF_INET, cli, srv); }

static inline void pl_set_nonblock(int fd, int on) {
    int fl = OK(fcntl(fd, F_GETFL));
    OK(fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)));
}

/* Writes all of buf (blocking socket), retrying short writes and EINTR. */
static inline void pl_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0, "write_all: write(%d, %zu) returned %zd", fd, n, r);
        p += r;
        n -= (size_t)r;
    }
}

/* Reads exactly n bytes (blocking socket), retrying short reads; EOF is a failure. */
static inline void pl_read_exact(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0, "read_exact: read(%d, %zu) returned %zd (%s)", fd, n, r,
              r == 0 ? "unexpected EOF" : "error");
        p += r;
        n -= (size_t)r;
    }
}

/* Expects end-of-file next (a read returning 0). */
static inline void pl_expect_eof(int fd) {
    char c;
    ssize_t r;
    do
        r = read(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    CHECK(r == 0, "expected EOF on fd %d, read returned %zd", fd, r);
}

/* Waits until fd reports any of `events` (poll), failing after `ms`. Returns revents. */
static inline short pl_wait_for(int fd, short events, int ms) {
    struct pollfd p = {.fd = fd, .events = events};
    double end = pl_now() + ms / 1000.0;
    for (;;) {
        int left = (int)((end - pl_now()) * 1000);
        if (left < 0)
            left = 0;
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "poll(fd %d)", fd);
        if (r == 1)
            return p.revents;
        if (left == 0)
            FAIL("fd %d: events 0x%x not reported within %d ms", fd, events, ms);
    }
}

/* Busy-free wait until `want` bytes are queued for reading on fd (FIONREAD), so a
 * following check sees the whole message regardless of how it was segmented. */
static inline void pl_wait_queued(int fd, int want, int ms) {
    double end = pl_now() + ms / 1000.0;
    for (;;) {
        int n = -1;
        OK(ioctl(fd, FIONREAD, &n));
        CHECK(n <= want, "FIONREAD %d exceeds the %d bytes sent", n, want);
        if (n == want)
            return;
        CHECK(pl_now() < end, "only %d of %d bytes arrived within %d ms", n, want, ms);
        pl_wait_for(fd, POLLIN, ms);
        pl_sleep_ms(1);
    }
}

/* Deterministic pseudo-random bytes: byte i of stream `seed` is always the same, so a
 * reader can check content and order without keeping a copy. */
static inline uint8_t pl_pattern(uint64_t seed, uint64_t i) {
    uint64_t x = (i / 8 + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xD1B54A32D192ED03ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (uint8_t)(x >> ((i % 8) * 8));
}

static inline void pl_fill(uint64_t seed, uint64_t offset, uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++)
        buf[i] = pl_pattern(seed, offset + i);
}

/* Checks buf against stream `seed` at `offset`; fails naming the first wrong byte. */
static inline void pl_verify(uint64_t seed, uint64_t offset, const uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (buf[i] != pl_pattern(seed, offset + i))
            FAIL("stream %llu: byte %llu is 0x%02x, expected 0x%02x (reordered or corrupted)",
                 (unsigned long long)seed, (unsigned long long)(offset + i), buf[i],
                 pl_pattern(seed, offset + i));
}

/* FNV-1a, for a printed checksum of a transfer. */
static inline uint64_t pl_fnv(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
#define PL_FNV_INIT 0xcbf29ce484222325ull

/* Dispatches argv[1] to one of the scenarios of a program. */
struct pl_case {
    const char *name;
    void (*fn)(void);
};

static inline int pl_main(int argc, char **argv, const char *prog, const struct pl_case *cases) {
    pl_init(prog);
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCENARIO\n", argv[0]);
        return 2;
    }
    for (const struct pl_case *c = cases; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0) {
            STEP(c->name);
            c->fn();
            printf("PASS %s %s\n", prog, c->name);
            return 0;
        }
    fprintf(stderr, "%s: unknown scenario '%s'\n", prog, argv[1]);
    return 2;
}

#endif
