/* Preload tests: the _FORTIFY_SOURCE entry points. Built with -O2 -D_FORTIFY_SOURCE=2, so
 * read/recv/recvfrom/poll/ppoll on buffers of known size compile to __read_chk,
 * __recv_chk, __recvfrom_chk, __poll_chk and __ppoll_chk (the Rust test checks the
 * executable's imports with nm -D). The lengths come from a volatile so the compiler
 * cannot prove them safe and fall back to the plain functions.
 * Usage: pl_fortify calls | overflow */
#include "pl_util.h"

static volatile size_t len64 = 64;
static volatile nfds_t two = 2;

static void t_calls(void) {
    int c, s, p[2];
    pl_tcp_pair(&c, &s);
    OK(pipe(p));
    char buf[64];
    STEP("__poll_chk");
    struct pollfd f[2] = {{.fd = s, .events = POLLIN}, {.fd = p[0], .events = POLLIN}};
    CHECK(poll(f, two, 0) == 0, "idle");
    pl_write_all(c, "recv-data", 9);
    pl_write_all(p[1], "pipe-data", 9);
    pl_wait_queued(s, 9, 5000);
    CHECK(poll(f, two, 5000) == 2 && f[0].revents == POLLIN && f[1].revents == POLLIN,
          "revents 0x%x 0x%x", f[0].revents, f[1].revents);
    STEP("__ppoll_chk");
    struct timespec ts = {5, 0};
    CHECK(ppoll(f, two, &ts, NULL) == 2, "ppoll");
    STEP("__recv_chk");
    CHECK(recv(s, buf, len64, MSG_PEEK) == 9 && memcmp(buf, "recv-data", 9) == 0, "recv peek");
    CHECK(recv(s, buf, len64, 0) == 9 && memcmp(buf, "recv-data", 9) == 0, "recv");
    STEP("__read_chk on a pipe");
    CHECK(read(p[0], buf, len64) == 9 && memcmp(buf, "pipe-data", 9) == 0, "read pipe");
    STEP("__read_chk on a socket");
    pl_write_all(c, "read-data", 9);
    pl_wait_queued(s, 9, 5000);
    CHECK(read(s, buf, len64) == 9 && memcmp(buf, "read-data", 9) == 0, "read socket");
    STEP("__recvfrom_chk");
    pl_write_all(c, "from-data", 9);
    pl_wait_queued(s, 9, 5000);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    CHECK(recvfrom(s, buf, len64, 0, (struct sockaddr *)&ss, &sl) == 9 &&
              memcmp(buf, "from-data", 9) == 0,
          "recvfrom");
    STEP("errors pass through the checked variants");
    EXPECT_ERR(recv(s, buf, len64, MSG_DONTWAIT), EAGAIN);
    pl_set_nonblock(s, 1);
    EXPECT_ERR(read(s, buf, len64), EAGAIN);
    EXPECT_ERR(recvfrom(s, buf, len64, 0, NULL, NULL), EAGAIN);
    close(c);
    pl_wait_for(s, POLLIN, 5000); /* the FIN */
    CHECK(read(s, buf, len64) == 0, "EOF through __read_chk");
    close(s);
    close(p[0]);
    close(p[1]);
}

/* The checks themselves must survive interposition: an overlong length still aborts. */
static void t_overflow(void) {
    static volatile size_t too_long = 128;
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_write_all(c, "x", 1);
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        /* glibc reports the overflow on stderr; keep the test output clean. */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);
        char small[64];
        ssize_t r = recv(s, small, too_long, 0);
        printf("recv with an overlong length returned %zd instead of aborting\n", r);
        _exit(0);
    }
    int st;
    OK(waitpid(pid, &st, 0));
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
          "__recv_chk with length > buffer: child status 0x%x, expected SIGABRT", st);
    close(c);
    close(s);
}

static const struct pl_case cases[] = {
    {"calls", t_calls},
    {"overflow", t_overflow},
    {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_fortify", cases); }
