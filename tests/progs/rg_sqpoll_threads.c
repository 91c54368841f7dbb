/*
 * Regression: sqpoll_rings_share_one_kernel_thread.
 *
 * With RINGSHIM_SQPOLL=1 every ring is meant to attach to one SQ thread. The ring the
 * shim builds at load to probe io_uring was itself an SQPOLL ring with its own thread,
 * and the first real ring did not attach to it: two iou-sqp threads competing for the
 * CPUs. Four threads each echo over their own loopback connection (so each gets a
 * ring), then the program counts its iou-sqp tasks: at most one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define THREADS 4
#define ROUNDS 200

static void die(const char *what) {
    fprintf(stderr, "FAIL rg_sqpoll_threads: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int listener;
static pthread_barrier_t done;
static pthread_mutex_t pairing = PTHREAD_MUTEX_INITIALIZER;

static void *echo_pair(void *arg) {
    (void)arg;
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    if (getsockname(listener, (struct sockaddr *)&a, &al) < 0)
        die("getsockname");
    /* Paired under a lock, so each accept() meets its own thread's connect(). */
    pthread_mutex_lock(&pairing);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    int s = accept(listener, NULL, NULL);
    if (s < 0)
        die("accept");
    pthread_mutex_unlock(&pairing);
    char out[512], in[512];
    for (int r = 0; r < ROUNDS; r++) {
        memset(out, 'a' + r % 26, sizeof out);
        if (write(c, out, sizeof out) != sizeof out)
            die("write request");
        size_t got = 0;
        while (got < sizeof in) {
            ssize_t n = read(s, in + got, sizeof in - got);
            if (n <= 0)
                die("server read");
            got += (size_t)n;
        }
        if (write(s, in, got) != (ssize_t)got)
            die("write reply");
        got = 0;
        while (got < sizeof in) {
            ssize_t n = read(c, in + got, sizeof in - got);
            if (n <= 0)
                die("client read");
            got += (size_t)n;
        }
        if (memcmp(in, out, sizeof out) != 0) {
            fprintf(stderr, "FAIL rg_sqpoll_threads: reply %d differs\n", r);
            exit(1);
        }
    }
    /* Stay alive (rings open) until main has counted. */
    pthread_barrier_wait(&done);
    pthread_barrier_wait(&done);
    close(c);
    close(s);
    return NULL;
}

static int sq_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d)
        die("opendir /proc/self/task");
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[64], comm[32] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof comm, f) && strncmp(comm, "iou-sqp", 7) == 0)
            count++;
        fclose(f);
    }
    closedir(d);
    return count;
}

int main(void) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 16) < 0)
        die("listen");
    pthread_barrier_init(&done, NULL, THREADS + 1);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, echo_pair, NULL);
    pthread_barrier_wait(&done);
    int n = sq_threads();
    pthread_barrier_wait(&done);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    if (n > 1) {
        fprintf(stderr, "FAIL rg_sqpoll_threads: %d iou-sqp threads, expected at most 1\n", n);
        return 1;
    }
    printf("ok rg_sqpoll_threads: %d threads echoed, %d SQ thread(s)\n", THREADS, n);
    return 0;
}
