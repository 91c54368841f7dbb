/* Preload tests: descriptor operations (dup family, fcntl, ioctl), fork, exec and fd
 * passing with connected TCP sockets. Usage: pl_fd SCENARIO (see cases[] below); the
 * program re-executes itself as `pl_fd exec-child FD CLOEXEC_FD` for the exec test. */
#include "pl_util.h"

#include <linux/close_range.h>
#include <linux/sockios.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/uio.h>

static int g_argc;
static char **g_argv;

static void t_dup(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int d = OK(dup(s));
    CHECK(d != s, "dup returned the same number");
    close(s);
    STEP("the dup carries the connection after the original is closed");
    pl_write_all(c, "abc", 3);
    char buf[4];
    pl_read_exact(d, buf, 3);
    CHECK(memcmp(buf, "abc", 3) == 0, "data through the dup");
    pl_write_all(d, "xyz", 3);
    pl_read_exact(c, buf, 3);
    CHECK(memcmp(buf, "xyz", 3) == 0, "data written through the dup");
    EXPECT_ERR(recv(c, buf, 1, MSG_DONTWAIT), EAGAIN); /* no EOF: still open via d */
    STEP("closing the last fd ends the connection");
    close(d);
    pl_expect_eof(c);
    close(c);
}

static void t_dup2(void) {
    int a1, b1, a2, b2;
    pl_tcp_pair(&a1, &b1);
    pl_tcp_pair(&a2, &b2);
    int ep = OK(epoll_create1(0));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 2};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, b2, &ev));
    STEP("dup2 onto an open socket closes it");
    CHECK(dup2(b1, b2) == b2, "dup2 result");
    pl_expect_eof(a2); /* the old b2 was the last reference to connection 2 */
    /* epoll keys registrations by (file, fd): the old file is gone, so is its entry. */
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, b2, NULL), ENOENT);
    STEP("the target number now refers to the first connection");
    pl_write_all(a1, "m", 1);
    char b;
    CHECK(read(b2, &b, 1) == 1 && b == 'm', "data via the dup2 target");
    pl_write_all(b2, "n", 1);
    CHECK(read(a1, &b, 1) == 1 && b == 'n', "data written via the dup2 target");
    STEP("dup2 onto itself is a no-op");
    CHECK(dup2(b1, b1) == b1, "dup2(fd, fd)");
    pl_write_all(b1, "o", 1);
    CHECK(read(a1, &b, 1) == 1 && b == 'o', "still open");
    STEP("dup2 onto a free number");
    int n = OK(dup(a1));
    close(n);
    CHECK(dup2(b1, n) == n, "dup2 to a free number");
    EXPECT_ERR(dup2(n + 100000, b1), EBADF);
    EXPECT_ERR(dup2(b1, -1), EBADF);
    STEP("the connection lives until the last of three fds closes");
    close(b1);
    close(b2);
    EXPECT_ERR(recv(a1, &b, 1, MSG_DONTWAIT), EAGAIN);
    close(n);
    pl_expect_eof(a1);
    close(a1);
    close(a2);
    close(ep);
}

static void t_dup3(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int n1 = OK(dup(c)), n2 = OK(dup(c));
    STEP("dup3 flags");
    CHECK(dup3(s, n1, O_CLOEXEC) == n1, "dup3(O_CLOEXEC)");
    CHECK(OK(fcntl(n1, F_GETFD)) == FD_CLOEXEC, "FD_CLOEXEC not set by dup3");
    CHECK(dup3(s, n2, 0) == n2, "dup3(0)");
    CHECK(OK(fcntl(n2, F_GETFD)) == 0, "FD_CLOEXEC set without O_CLOEXEC");
    EXPECT_ERR(dup3(s, s, 0), EINVAL);
    EXPECT_ERR(dup3(s, n1, 0x1234), EINVAL);
    STEP("data through dup3 targets");
    pl_write_all(n1, "1", 1);
    pl_write_all(n2, "2", 1);
    char buf[2];
    pl_read_exact(c, buf, 2);
    CHECK(buf[0] == '1' && buf[1] == '2', "order of writes through two dups");
    close(n1);
    close(n2);
    close(s);
    pl_expect_eof(c);
    close(c);
}

static void t_dupfd(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    STEP("F_DUPFD_CLOEXEC / F_DUPFD");
    int f = OK(fcntl(s, F_DUPFD_CLOEXEC, 100));
    int g = OK(fcntl(s, F_DUPFD, 100));
    CHECK(f >= 100 && g >= 100 && f != g, "numbers %d %d", f, g);
    CHECK(OK(fcntl(f, F_GETFD)) == FD_CLOEXEC, "F_DUPFD_CLOEXEC without FD_CLOEXEC");
    CHECK(OK(fcntl(g, F_GETFD)) == 0, "F_DUPFD with FD_CLOEXEC");
    CHECK(OK(fcntl(s, F_GETFD)) == 0, "descriptor flags are per fd");
    STEP("file status flags are shared by all dups");
    pl_set_nonblock(g, 1);
    CHECK(OK(fcntl(s, F_GETFL)) & O_NONBLOCK, "O_NONBLOCK set via a dup not visible");
    char b;
    EXPECT_ERR(read(s, &b, 1), EAGAIN);
    EXPECT_ERR(read(f, &b, 1), EAGAIN);
    int off = 0;
    OK(ioctl(f, FIONBIO, &off));
    CHECK(!(OK(fcntl(g, F_GETFL)) & O_NONBLOCK), "FIONBIO via a dup not visible");
    STEP("data through the duplicates");
    pl_write_all(c, "d", 1);
    CHECK(read(f, &b, 1) == 1 && b == 'd', "read via F_DUPFD_CLOEXEC copy");
    pl_write_all(g, "e", 1);
    CHECK(read(c, &b, 1) == 1 && b == 'e', "write via F_DUPFD copy");
    close(f);
    close(g);
    close(s);
    pl_expect_eof(c);
    close(c);
}

static void wait_ok(pid_t pid) {
    int st;
    STEP("waitpid");
    OK(waitpid(pid, &st, 0));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d ended with status 0x%x", (int)pid, st);
}

/* The child uses an inherited connected socket; the parent closes its copy. */
static void t_fork_child(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        close(c);
        STEP("child: read request");
        char buf[4];
        pl_read_exact(s, buf, 4);
        CHECK(memcmp(buf, "ping", 4) == 0, "child got wrong request");
        STEP("child: send 1 MiB");
        static uint8_t out[1 << 20];
        pl_fill(5, 0, out, sizeof out);
        pl_write_all(s, out, sizeof out);
        exit(0); /* exit() runs atexit handlers and destructors: they must flush, not drop */
    }
    close(s);
    STEP("parent: request");
    pl_write_all(c, "ping", 4);
    static uint8_t in[1 << 20];
    pl_read_exact(c, in, sizeof in);
    pl_verify(5, 0, in, sizeof in);
    STEP("parent: EOF once the child (last holder) exited");
    pl_expect_eof(c);
    wait_ok(pid);
    close(c);
}

/* Children write on the parent's socket and exit; the parent keeps using it. */
static void t_fork_parent(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_write_all(c, "before-fork", 11);
    pl_wait_queued(s, 11, 5000);
    for (int i = 1; i <= 2; i++) {
        pid_t pid = OK(fork());
        if (pid == 0) {
            pl_child_init();
            STEP("child: write");
            char msg[16];
            snprintf(msg, sizeof msg, "from-child%d", i);
            pl_write_all(s, msg, 11);
            if (i == 1)
                exit(0);
            _exit(0); /* no destructors at all */
        }
        wait_ok(pid);
    }
    STEP("parent: data that arrived before the fork is still there");
    char buf[32];
    pl_read_exact(s, buf, 11);
    CHECK(memcmp(buf, "before-fork", 11) == 0, "parent lost its pending data");
    STEP("peer sees the children's writes in order");
    pl_read_exact(c, buf, 22);
    CHECK(memcmp(buf, "from-child1from-child2", 22) == 0, "children's writes: %.22s", buf);
    STEP("parent: bulk both ways after the children exited");
    static uint8_t big[256 * 1024];
    pl_fill(1, 0, big, sizeof big);
    pl_write_all(s, big, sizeof big);
    memset(big, 0, sizeof big);
    pl_read_exact(c, big, sizeof big);
    pl_verify(1, 0, big, sizeof big);
    pl_fill(2, 0, big, sizeof big);
    pl_write_all(c, big, sizeof big);
    memset(big, 0, sizeof big);
    pl_read_exact(s, big, sizeof big);
    pl_verify(2, 0, big, sizeof big);
    close(s);
    pl_expect_eof(c);
    close(c);
}

/* Parent and child read from one socket: each read takes bytes from the one kernel queue,
 * so what the child consumed is gone for the parent, and nothing else is. */
static void t_fork_shared_read(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    STEP("data queued before the fork");
    pl_write_all(c, "0123456789", 10);
    pl_wait_queued(s, 10, 5000);
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        char b[4];
        pl_read_exact(s, b, 4);
        CHECK(memcmp(b, "0123", 4) == 0, "child read %.4s", b);
        exit(0);
    }
    wait_ok(pid);
    char buf[16];
    pl_set_nonblock(s, 1);
    ssize_t r = read(s, buf, sizeof buf);
    CHECK(r == 6 && memcmp(buf, "456789", 6) == 0, "parent read %zd bytes '%.*s', expected '456789'",
          r, r > 0 ? (int)r : 0, buf);
    pl_set_nonblock(s, 0);
    STEP("data arriving after the fork");
    int p[2];
    OK(pipe(p));
    pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        char b[3];
        pl_read_exact(s, b, 3);
        CHECK(memcmp(b, "abc", 3) == 0, "child read %.3s", b);
        pl_write_all(p[1], "k", 1);
        exit(0);
    }
    /* Only the child reads until it reported: the parent must not race it. */
    pl_write_all(c, "abc", 3);
    char k;
    pl_read_exact(p[0], &k, 1);
    wait_ok(pid);
    pl_write_all(c, "def", 3);
    pl_read_exact(s, buf, 3);
    CHECK(memcmp(buf, "def", 3) == 0, "parent read %.3s after the child's read", buf);
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
}

#define EXEC_BULK (256 * 1024)

/* Parent side of the exec tests: what the exec'd image (exec_child) sends and expects. */
static void exec_peer(int c, pid_t pid) {
    STEP("parent: read what the new image writes");
    char buf[16];
    pl_read_exact(c, buf, 10);
    CHECK(memcmp(buf, "post-exec:", 10) == 0, "got '%.10s'", buf);
    static uint8_t in[EXEC_BULK];
    pl_read_exact(c, in, sizeof in);
    pl_verify(9, 0, in, sizeof in);
    pl_write_all(c, "bye", 3);
    pl_expect_eof(c);
    wait_ok(pid);
}

static void t_exec(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int cx = OK(fcntl(s, F_DUPFD_CLOEXEC, 50));
    /* Queued on s before the exec: the new image must find these bytes. */
    pl_write_all(c, "pre-exec-from-peer", 18);
    pl_wait_queued(s, 18, 5000);
    const char *preload = getenv("LD_PRELOAD");
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        close(c);
        STEP("child: write, then exec immediately");
        pl_write_all(s, "pre-exec:", 9);
        char fd1[16], fd2[16];
        snprintf(fd1, sizeof fd1, "%d", s);
        snprintf(fd2, sizeof fd2, "%d", cx);
        execl("/proc/self/exe", g_argv[0], "exec-child", fd1, fd2, preload ? preload : "",
              (char *)NULL);
        FAIL("execl");
    }
    close(s);
    close(cx);
    STEP("parent: bytes written before exec arrive first");
    char buf[9];
    pl_read_exact(c, buf, 9);
    CHECK(memcmp(buf, "pre-exec:", 9) == 0, "got '%.9s'", buf);
    exec_peer(c, pid);
    close(c);
}

/* posix_spawn: glibc execs from a CLONE_VM child without going through the exported
 * exec functions, so this is the exec path a shim sees least of. */
static void t_spawn(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int cx = OK(fcntl(s, F_DUPFD_CLOEXEC, 50));
    pl_write_all(c, "pre-exec-from-peer", 18);
    pl_wait_queued(s, 18, 5000);
    const char *preload = getenv("LD_PRELOAD");
    char fd1[16], fd2[16];
    snprintf(fd1, sizeof fd1, "%d", s);
    snprintf(fd2, sizeof fd2, "%d", cx);
    char *args[] = {g_argv[0], "exec-child", fd1, fd2, (char *)(preload ? preload : ""), NULL};
    pid_t pid;
    STEP("posix_spawn");
    int err = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ);
    errno = err;
    CHECK(err == 0, "posix_spawn");
    close(s);
    close(cx);
    exec_peer(c, pid);
    close(c);
}

/* The exec'd image: argv = exec-child FD CLOEXEC_FD PARENT_LD_PRELOAD. */
static void exec_child(void) {
    CHECK(g_argc == 5, "exec-child needs 3 arguments");
    int fd = atoi(g_argv[2]), cx = atoi(g_argv[3]);
    const char *pre = getenv("LD_PRELOAD");
    STEP("exec-child: environment inherited");
    CHECK(strcmp(pre ? pre : "", g_argv[4]) == 0, "LD_PRELOAD changed across exec: '%s' vs '%s'",
          pre ? pre : "", g_argv[4]);
    STEP("exec-child: FD_CLOEXEC fd is closed, the other is a connected TCP socket");
    EXPECT_ERR(fcntl(cx, F_GETFD), EBADF);
    int type = 0;
    socklen_t tl = sizeof type;
    OK(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl));
    CHECK(type == SOCK_STREAM, "SO_TYPE %d", type);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    OK(getpeername(fd, (struct sockaddr *)&peer, &pl));
    CHECK(!(OK(fcntl(fd, F_GETFL)) & O_NONBLOCK), "inherited socket became non-blocking");
    STEP("exec-child: read what the peer sent before the exec");
    char buf[18];
    pl_read_exact(fd, buf, 18);
    CHECK(memcmp(buf, "pre-exec-from-peer", 18) == 0, "got '%.18s'", buf);
    STEP("exec-child: write");
    pl_write_all(fd, "post-exec:", 10);
    static uint8_t out[EXEC_BULK];
    pl_fill(9, 0, out, sizeof out);
    pl_write_all(fd, out, sizeof out);
    pl_read_exact(fd, buf, 3);
    CHECK(memcmp(buf, "bye", 3) == 0, "got '%.3s'", buf);
}

/* A socket passed with SCM_RIGHTS to another process carries its queued bytes along. */
static void t_scm_rights(void) {
    int c, s, u[2];
    pl_tcp_pair(&c, &s);
    OK(socketpair(AF_UNIX, SOCK_STREAM, 0, u));
    pl_write_all(c, "before", 6);
    pl_wait_queued(s, 6, 5000);
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        close(c);
        close(s);
        close(u[0]);
        STEP("child: receive the fd");
        char tag;
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = &tag, .iov_len = 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        CHECK(recvmsg(u[1], &mh, 0) == 1, "recvmsg");
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        CHECK(cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS, "no SCM_RIGHTS");
        int r;
        memcpy(&r, CMSG_DATA(cm), sizeof r);
        STEP("child: bytes queued before the transfer");
        char buf[8];
        pl_read_exact(r, buf, 6);
        CHECK(memcmp(buf, "before", 6) == 0, "got '%.6s'", buf);
        pl_read_exact(r, buf, 5);
        CHECK(memcmp(buf, "after", 5) == 0, "got '%.5s'", buf);
        pl_write_all(r, "child-reply", 11);
        exit(0);
    }
    close(u[1]);
    STEP("parent: send the socket, then close it");
    char tag = 'F';
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = &tag, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &s, sizeof s);
    CHECK(sendmsg(u[0], &mh, 0) == 1, "sendmsg");
    close(s);
    pl_write_all(c, "after", 5);
    char buf[11];
    pl_read_exact(c, buf, 11);
    CHECK(memcmp(buf, "child-reply", 11) == 0, "got '%.11s'", buf);
    pl_expect_eof(c);
    wait_ok(pid);
    close(u[0]);
    close(c);
}

/* close_range() closes sockets behind the back of anything that tracks fds by number;
 * new descriptors reusing those numbers must behave like fresh ones. */
static void t_close_range(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_set_nonblock(s, 1);
    int ep = OK(epoll_create1(0));
    struct epoll_event ev = {.events = EPOLLIN};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    /* One fd per call: a wider range could take in descriptors this test does not own. */
    STEP("CLOSE_RANGE_CLOEXEC keeps the fd open");
    if (close_range((unsigned)s, (unsigned)s, CLOSE_RANGE_CLOEXEC) != 0) {
        if (errno == ENOSYS || errno == EINVAL) {
            printf("SKIP: close_range(CLOSE_RANGE_CLOEXEC) unsupported\n");
            exit(PL_SKIP);
        }
        FAIL("close_range(CLOEXEC)");
    }
    CHECK(OK(fcntl(s, F_GETFD)) == FD_CLOEXEC, "CLOSE_RANGE_CLOEXEC did not set FD_CLOEXEC");
    pl_write_all(c, "k", 1);
    pl_wait_queued(s, 1, 5000);
    STEP("close_range closes both ends");
    OK(close_range((unsigned)c, (unsigned)c, 0));
    OK(close_range((unsigned)s, (unsigned)s, 0));
    EXPECT_ERR(fcntl(c, F_GETFD), EBADF);
    EXPECT_ERR(fcntl(s, F_GETFD), EBADF);
    STEP("a pipe reusing the numbers");
    int p[2];
    OK(pipe(p));
    CHECK(!(OK(fcntl(p[0], F_GETFL)) & O_NONBLOCK), "new pipe inherited O_NONBLOCK");
    pl_write_all(p[1], "pipe", 4);
    char buf[8];
    pl_read_exact(p[0], buf, 4);
    CHECK(memcmp(buf, "pipe", 4) == 0, "pipe data");
    struct pollfd f = {.fd = p[0], .events = POLLIN};
    CHECK(poll(&f, 1, 0) == 0, "empty pipe readable");
    close(p[0]);
    close(p[1]);
    STEP("a new connection reusing the numbers");
    int c2, s2;
    pl_tcp_pair(&c2, &s2);
    CHECK(!(OK(fcntl(s2, F_GETFL)) & O_NONBLOCK), "new socket inherited O_NONBLOCK");
    /* Never registered in ep (the old registration died with the old socket). */
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, s2, NULL), ENOENT);
    pl_write_all(c2, "new", 3);
    pl_read_exact(s2, buf, 3);
    CHECK(memcmp(buf, "new", 3) == 0, "data on the new connection");
    close(c2);
    close(s2);
    close(ep);
}

/* stdio on a socket: glibc's FILE functions read, write and close through internal
 * entry points, not the exported read/write/close. */
static void t_stdio(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int num = s;
    FILE *f = fdopen(s, "r+");
    CHECK(f != NULL, "fdopen");
    STEP("fputs + fflush");
    CHECK(fputs("line from stdio\n", f) >= 0 && fflush(f) == 0, "fputs/fflush");
    char buf[64];
    pl_read_exact(c, buf, 16);
    CHECK(memcmp(buf, "line from stdio\n", 16) == 0, "peer got '%.16s'", buf);
    STEP("fgets");
    pl_write_all(c, "first\nsecond\n", 13);
    CHECK(fgets(buf, sizeof buf, f) && strcmp(buf, "first\n") == 0, "fgets 1: '%s'", buf);
    CHECK(fgets(buf, sizeof buf, f) && strcmp(buf, "second\n") == 0, "fgets 2: '%s'", buf);
    STEP("fclose closes the socket");
    /* glibc closes the fd with its internal close, invisible to an interposed close(). */
    CHECK(fclose(f) == 0, "fclose");
    EXPECT_ERR(fcntl(num, F_GETFD), EBADF);
    pl_expect_eof(c);
    STEP("a new connection reusing the number");
    int c2, s2;
    pl_tcp_pair(&c2, &s2);
    int fresh = s2 == num ? s2 : c2 == num ? c2 : -1;
    int other = fresh == s2 ? c2 : s2;
    if (fresh >= 0) {
        pl_write_all(other, "again", 5);
        pl_read_exact(fresh, buf, 5);
        CHECK(memcmp(buf, "again", 5) == 0, "data on the reused number");
    }
    close(c2);
    close(s2);
    close(c);
}

static void t_nonblock(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    char b[8];
    struct iovec iov = {.iov_base = b, .iov_len = sizeof b};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    STEP("fcntl O_NONBLOCK");
    int fl = OK(fcntl(s, F_GETFL));
    CHECK((fl & O_ACCMODE) == O_RDWR && !(fl & O_NONBLOCK), "initial flags 0%o", fl);
    OK(fcntl(s, F_SETFL, fl | O_NONBLOCK));
    CHECK(OK(fcntl(s, F_GETFL)) & O_NONBLOCK, "O_NONBLOCK not set");
    EXPECT_ERR(read(s, b, 1), EAGAIN);
    EXPECT_ERR(recv(s, b, 1, 0), EAGAIN);
    EXPECT_ERR(recvfrom(s, b, 1, 0, NULL, NULL), EAGAIN);
    EXPECT_ERR(recvmsg(s, &mh, 0), EAGAIN);
    EXPECT_ERR(readv(s, &iov, 1), EAGAIN);
    OK(fcntl(s, F_SETFL, fl));
    CHECK(!(OK(fcntl(s, F_GETFL)) & O_NONBLOCK), "O_NONBLOCK not cleared");
    STEP("ioctl FIONBIO");
    int on = 1, off = 0;
    OK(ioctl(s, FIONBIO, &on));
    CHECK(OK(fcntl(s, F_GETFL)) & O_NONBLOCK, "FIONBIO did not set O_NONBLOCK");
    EXPECT_ERR(read(s, b, 1), EAGAIN);
    pl_write_all(c, "y", 1);
    pl_wait_queued(s, 1, 5000);
    ssize_t got = read(s, b, 8);
    CHECK(got == 1 && b[0] == 'y', "FIONREAD reported 1 byte, then read returned %zd", got);
    OK(ioctl(s, FIONBIO, &off));
    CHECK(!(OK(fcntl(s, F_GETFL)) & O_NONBLOCK), "FIONBIO did not clear O_NONBLOCK");
    STEP("SO_RCVTIMEO bounds a blocking read");
    struct timeval tv = {0, 100000};
    OK(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    double t0 = pl_now();
    EXPECT_ERR(read(s, b, 1), EAGAIN);
    CHECK(pl_now() - t0 >= 0.090, "SO_RCVTIMEO 100 ms returned after %.1f ms", (pl_now() - t0) * 1000);
    STEP("SO_SNDTIMEO bounds a blocking write to a full connection");
    OK(setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
    static char chunk[65536];
    size_t total = 0;
    for (;;) {
        ssize_t w = write(c, chunk, sizeof chunk);
        if (w < 0) {
            CHECK(errno == EAGAIN, "write to a full connection");
            break;
        }
        total += (size_t)w;
        CHECK(total < (256u << 20), "256 MiB accepted by a connection nobody reads");
    }
    close(c);
    close(s);
}

static void t_fionread(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    static uint8_t out[12345], in[12345];
    pl_fill(4, 0, out, sizeof out);
    STEP("FIONREAD counts exactly the bytes sent");
    pl_write_all(c, out, sizeof out);
    pl_wait_queued(s, 12345, 5000); /* also fails if it ever exceeds 12345 */
    int n = -1;
    OK(ioctl(s, SIOCINQ, &n));
    CHECK(n == 12345, "SIOCINQ %d", n);
    pl_read_exact(s, in, 100);
    OK(ioctl(s, FIONREAD, &n));
    CHECK(n == 12245, "FIONREAD after reading 100 bytes: %d", n);
    pl_read_exact(s, in + 100, sizeof in - 100);
    pl_verify(4, 0, in, sizeof in);
    OK(ioctl(s, FIONREAD, &n));
    CHECK(n == 0, "FIONREAD after draining: %d", n);
    STEP("SIOCOUTQ / TIOCOUTQ");
    int q1 = -1, q2 = -1;
    OK(ioctl(c, SIOCOUTQ, &q1));
    OK(ioctl(c, TIOCOUTQ, &q2));
    CHECK(q1 >= 0 && q1 <= 12345 && q2 >= 0 && q2 <= 12345, "SIOCOUTQ %d TIOCOUTQ %d", q1, q2);
    /* Everything was read by the peer, so it was acknowledged: the queue empties. */
    for (int i = 0; i < 500 && q1 != 0; i++) {
        pl_sleep_ms(10);
        OK(ioctl(c, SIOCOUTQ, &q1));
    }
    CHECK(q1 == 0, "SIOCOUTQ still %d after the peer read everything", q1);
    OK(ioctl(c, SIOCOUTQNSD, &q1));
    CHECK(q1 == 0, "SIOCOUTQNSD %d", q1);
    STEP("FIONREAD on a listener");
    int lfd = pl_listen(AF_INET, 0);
    EXPECT_ERR(ioctl(lfd, FIONREAD, &n), EINVAL);
    close(lfd);
    close(c);
    close(s);
}

static const struct pl_case cases[] = {
    {"dup", t_dup},
    {"dup2", t_dup2},
    {"dup3", t_dup3},
    {"dupfd", t_dupfd},
    {"fork_child", t_fork_child},
    {"fork_parent", t_fork_parent},
    {"fork_shared_read", t_fork_shared_read},
    {"exec", t_exec},
    {"exec-child", exec_child},
    {"spawn", t_spawn},
    {"close_range", t_close_range},
    {"stdio", t_stdio},
    {"scm_rights", t_scm_rights},
    {"nonblock", t_nonblock},
    {"fionread", t_fionread},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    return pl_main(argc, argv, "pl_fd", cases);
}
