/* Preload tests: signals interrupting blocking socket calls. Usage: pl_signal SCENARIO.
 *
 * signal(7): epoll_wait, poll and select fail with EINTR after a handler ran, with or
 * without SA_RESTART; recv/accept without a timeout are restarted under SA_RESTART and
 * fail with EINTR otherwise; a socket call with SO_RCVTIMEO fails with EINTR even under
 * SA_RESTART. A shim that waits on its own terms must reproduce all of this.
 *
 * The interrupting SIGALRM repeats every 50 ms (ITIMER_REAL), so the call is interrupted
 * even if the first signal lands before the call is entered on a slow machine. */
#include "pl_util.h"

#include <sys/epoll.h>
#include <sys/select.h>

static volatile sig_atomic_t alarms;
static void on_alarm(int sig) {
    (void)sig;
    alarms++;
}

static void arm(int sa_flags) {
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = sa_flags};
    sigemptyset(&sa.sa_mask);
    OK(sigaction(SIGALRM, &sa, NULL));
    alarms = 0;
    struct itimerval it = {.it_interval = {0, 50000}, .it_value = {0, 100000}};
    OK(setitimer(ITIMER_REAL, &it, NULL));
}

static void disarm(void) {
    struct itimerval it = {{0, 0}, {0, 0}};
    OK(setitimer(ITIMER_REAL, &it, NULL));
    CHECK(alarms >= 1, "the handler never ran");
}

static const int flag_sets[] = {0, SA_RESTART};

static void t_epoll(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    struct epoll_event ev = {.events = EPOLLIN};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    for (int i = 0; i < 2; i++) {
        STEP(i ? "epoll_wait, SA_RESTART" : "epoll_wait, no SA_RESTART");
        arm(flag_sets[i]);
        struct epoll_event evs[2];
        EXPECT_ERR(epoll_wait(ep, evs, 2, -1), EINTR);
        disarm();
    }
    STEP("epoll_pwait");
    arm(0);
    struct epoll_event evs[2];
    EXPECT_ERR(epoll_pwait(ep, evs, 2, -1, NULL), EINTR);
    disarm();
    close(ep);
    close(c);
    close(s);
}

static void t_poll(void) {
    int c, s, p[2];
    pl_tcp_pair(&c, &s);
    OK(pipe(p));
    struct pollfd f[2] = {{.fd = s, .events = POLLIN}, {.fd = p[0], .events = POLLIN}};
    for (int i = 0; i < 2; i++) {
        STEP(i ? "poll, SA_RESTART" : "poll, no SA_RESTART");
        arm(flag_sets[i]);
        EXPECT_ERR(poll(f, 2, -1), EINTR);
        disarm();
        STEP(i ? "poll with timeout, SA_RESTART" : "poll with timeout, no SA_RESTART");
        arm(flag_sets[i]);
        EXPECT_ERR(poll(f, 2, 10000), EINTR);
        disarm();
        STEP(i ? "select, SA_RESTART" : "select, no SA_RESTART");
        arm(flag_sets[i]);
        fd_set r;
        FD_ZERO(&r);
        FD_SET(s, &r);
        FD_SET(p[0], &r);
        EXPECT_ERR(select((s > p[0] ? s : p[0]) + 1, &r, NULL, NULL, NULL), EINTR);
        disarm();
    }
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
}

struct late_sender {
    int fd;
    int after_alarms; /* send once this many handlers have run */
};

static void *send_late(void *arg) {
    struct late_sender *ls = arg;
    while (alarms < ls->after_alarms)
        pl_sleep_ms(5);
    pl_write_all(ls->fd, "L", 1);
    return NULL;
}

/* Starts send_late with SIGALRM blocked, so the signal always goes to the main thread. */
static pthread_t start_late_sender(struct late_sender *ls) {
    sigset_t alrm, old;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, &old);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, send_late, ls) == 0, "pthread_create");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return t;
}

static void t_recv(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    char b;
    STEP("blocking recv, no SA_RESTART");
    arm(0);
    EXPECT_ERR(recv(s, &b, 1, 0), EINTR);
    disarm();
    STEP("blocking read, no SA_RESTART");
    arm(0);
    EXPECT_ERR(read(s, &b, 1), EINTR);
    disarm();

    STEP("blocking recv, SA_RESTART: restarted, then gets the data");
    arm(SA_RESTART);
    struct late_sender ls = {.fd = c, .after_alarms = 3};
    pthread_t t = start_late_sender(&ls);
    ssize_t r = recv(s, &b, 1, 0);
    CHECK(r == 1 && b == 'L', "recv returned %zd after %d signals", r, (int)alarms);
    disarm();
    pthread_join(t, NULL);

    STEP("recv with SO_RCVTIMEO, SA_RESTART: EINTR, not restarted");
    struct timeval tv = {10, 0};
    OK(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    arm(SA_RESTART);
    EXPECT_ERR(recv(s, &b, 1, 0), EINTR);
    disarm();

    STEP("blocking accept, no SA_RESTART");
    int lfd = pl_listen(AF_INET, 0);
    arm(0);
    EXPECT_ERR(accept(lfd, NULL, NULL), EINTR);
    disarm();
    close(lfd);
    close(c);
    close(s);
}

static const struct pl_case cases[] = {
    {"epoll", t_epoll},
    {"poll", t_poll},
    {"recv", t_recv},
    {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_signal", cases); }
