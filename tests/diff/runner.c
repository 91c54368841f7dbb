/* ringshim differential scenario runner.
 *
 * Runs one scenario file (a sequence of socket calls) and prints a canonical trace of
 * every call: what was called, its return value, errno name, and the data moved. The
 * Rust harness (tests/differential.rs) runs the same file without LD_PRELOAD and under
 * each shim configuration and requires byte-identical traces: invariant 8, "errors
 * match the kernel". The runner calls libc directly, so every traced call goes through
 * the preloaded library exactly as an application's call would.
 *
 * Nothing that legitimately varies between runs may reach the trace: fd numbers are
 * printed as slot names, ports as the slot that owns them ("@s1"), other non-zero ports
 * as "*", large payloads as length + hash.
 *
 * Usage: runner SCENARIO.scn    (trace on stdout; exit 0 ok, 2 scenario error,
 *                                3 watchdog timeout, 4 an "=>" expectation failed)
 * stderr gets one line "ringshim-diff: preload=<lib>|none" so the harness can prove the
 * shim was really loaded (ld.so only warns when a preload fails).
 *
 * DSL (one statement per line; '#' starts a comment; tokens are separated by blanks;
 * "quoted" strings take \n \r \t \0 \\ \" \xNN escapes):
 *
 *   [NAME =] CALL ARGS... [=> EXPECTED-PREFIX]
 *
 * NAME binds the fd a call returns to a slot. An FD argument is a slot name (its fd
 * number, still used after close, so a closed slot gives EBADF) or a literal number
 * (e.g. 900: never opened). "=> X" makes the runner check that the result text starts
 * with X (documents intent and proves the scenario reaches the state it claims; the
 * harness requires expectations to hold without the shim).
 *
 * Sockets and addresses
 *   s = socket FAMILY TYPE [PROTO]   FAMILY inet|inet6|unix|N; TYPE stream|dgram|seqpacket|N
 *                                    plus |nonblock|cloexec; PROTO 0|tcp|udp|N
 *   a b = socketpair FAMILY TYPE     r w = pipe         f = tmpfile (unlinked regular file)
 *   bind FD ADDR [len=N]             connect FD ADDR [len=N]        listen FD BACKLOG
 *   a = accept FD                    a = accept4 FD FLAGS (nonblock|cloexec|0|N)
 *   shutdown FD rd|wr|rdwr|N         close FD
 *   getsockname FD [len=N]           getpeername FD [len=N]
 *   ADDR: 127.0.0.1:PORT | [::1]:PORT | unspec | none | @SLOT (the slot's local address)
 *         PORT is a number or @SLOT (that slot's local port).
 * Data
 *   send FD DATA [MSGFLAGS]          sendto FD DATA ADDR [len=N] [MSGFLAGS]
 *   write FD DATA                    writev FD DATA DATA...
 *   sendmsg FD DATA... [to=ADDR] [MSGFLAGS]
 *   recv FD N [MSGFLAGS] [badbuf]    recvfrom FD N [MSGFLAGS]        read FD N [badbuf]
 *   readv FD N,N,...                 recvmsg FD N,N,... [name] [MSGFLAGS]
 *   DATA: "text" | pattern:N (N bytes, byte i = i % 251) | zeros:N | badptr:N (unmapped
 *         buffer: the kernel says EFAULT); "badbuf" makes a receive use an unmapped buffer
 *   Results show the bytes received ("..." escaped; over 64 bytes as length + FNV-1a hash);
 *   receive buffers carry a guard zone, and a call that writes past its length is flagged.
 *   MSGFLAGS: peek|waitall|trunc|dontwait|nosignal|oob|more joined by '|', or 0
 *   transfer SRC DST N   push N pattern bytes from SRC to DST (both non-blocking) with
 *                        one epoll instance until all arrived; prints totals + integrity
 * Options and control
 *   setsockopt FD OPT VALUE [len=N]  getsockopt FD OPT [len=N]
 *     OPT: SO_*, TCP_*, IPV6_V6ONLY, IP_TOS, IP_TTL (see opts[]) or raw:LEVEL:OPTNAME;
 *     VALUE: integer | on | off | A,B (SO_LINGER onoff,secs; SO_*TIMEO sec,usec)
 *   fcntl FD getfl | setfl FLAGS | getfd | setfd cloexec|0 | dupfd N | dupfd_cloexec N
 *   ioctl FD fionread | fionbio 0|1 | raw:N
 *   d = dup FD     [d =] dup2 FD TARGET     [d =] dup3 FD TARGET [cloexec|0|N]
 * Readiness
 *   e = epoll_create [SIZE]          e = epoll_create1 [cloexec|0|N]
 *   epoll_ctl E add|mod|del FD [EVENTS]   EVENTS: in|out|pri|err|hup|rdhup|et|oneshot|exclusive
 *   epoll_wait E MAX TIMEOUT_MS      epoll_pwait E MAX TIMEOUT_MS   (events sorted by slot)
 *   poll FD:EVENTS... TIMEOUT_MS     ppoll FD:EVENTS... TIMEOUT_MS
 *   select [in=FD,FD] [out=FD,FD] TIMEOUT_MS
 * Deterministic waits (there is no sleep: each waits for a condition, bounded at 5 s, and
 * prints "ok" or "timeout")
 *   wait_readable FD   wait_writable FD   wait_bytes FD N (FIONREAD >= N)
 *   wait_revents FD EVENTS   poll until every listed bit (err, pri, hup, ...) is reported
 * Process
 *   sigpipes            SIGPIPEs received since the last query (the runner counts them;
 *                       a counting handler returns EPIPE like SIG_IGN but is observable)
 *   getenv NAME         prints whether NAME is set   (only for the harness's self-test)
 *   exit_if_env NAME    exits 0 at once if NAME is set (only for the harness's self-test)
 *
 * Address mapping (the ustack variants of tests/differential.rs run the same loopback
 * scenarios across a user-space stack): three variables, read once at start, let the
 * harness move the scenario off 127.0.0.1 without touching the files.
 *   DIFF_ADDR_BIND=IP      a bind to 127.0.0.1 binds IP instead (e.g. 0.0.0.0)
 *   DIFF_ADDR_CONNECT=IP   connect/sendto/sendmsg to 127.0.0.1, to 0.0.0.0, or to an @slot
 *                          address whose host is one of these or DIFF_ADDR_BIND, go to IP
 *   DIFF_ADDR_ALIASES=IP,IP... printed as 127.0.0.1 (the hosts the mapping introduces)
 * The baseline and the shimmed run get the same mapping, so the traces stay comparable.
 *
 * Trace line: "L<line>: <statement> -> <result>", result "-1 ENAME" on failure; fd results
 * name their slot; addresses print as IP:PORT len=N with PORT normalized. The whole
 * scenario is bounded by alarm(10): a hang prints "# TIMEOUT" and exits 3.
 *
 * Bookkeeping: after bind/connect/listen/accept/sendto/sendmsg the runner records the
 * slot's local address with an untraced getsockname() (through libc, so the shim answers
 * it) for "@slot" arguments and port names. Apart from that and the internals of the
 * transfer and wait commands (which print only their outcome), every call is traced.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAXSLOTS 128
#define MAXTOK 64
#define WAIT_MS 5000 /* bound of every condition wait; far above loopback latency */
#define DATA_INLINE_MAX 64

/* ---------- small utilities ---------- */

static volatile sig_atomic_t cur_line;
static volatile sig_atomic_t sigpipe_count;
static const char *scenario_path;
static int expectation_failed;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s:%d: ", scenario_path, (int)cur_line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* Growable string: trace results can hold escaped payloads of any length. */
struct sb {
    char *p;
    size_t len, cap;
};

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            die("vsnprintf failed");
        if (b->p && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 64) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            die("out of memory");
        b->p[b->len] = 0;
    }
}

static const char *ename(int e)
{
    static char buf[32];
    if (e == 0)
        return "0";
    const char *n = strerrorname_np(e);
    if (n)
        return n;
    snprintf(buf, sizeof buf, "E#%d", e);
    return buf;
}

static int parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (!*s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

static long need_long(const char *s, const char *what)
{
    long v;
    if (parse_long(s, &v))
        die("%s: expected a number, got '%s'", what, s);
    return v;
}

/* Escaped payload; big payloads as length + FNV-1a so traces stay readable. */
static void put_data(struct sb *b, const unsigned char *d, size_t n)
{
    if (n > DATA_INLINE_MAX) {
        uint64_t h = 1469598103934665603ULL;
        for (size_t i = 0; i < n; i++)
            h = (h ^ d[i]) * 1099511628211ULL;
        sb_printf(b, "<%zu bytes fnv1a=%016llx>", n, (unsigned long long)h);
        return;
    }
    sb_printf(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = d[i];
        if (c == '"' || c == '\\')
            sb_printf(b, "\\%c", c);
        else if (c == '\n')
            sb_printf(b, "\\n");
        else if (c == '\r')
            sb_printf(b, "\\r");
        else if (c == '\t')
            sb_printf(b, "\\t");
        else if (c >= 0x20 && c < 0x7f)
            sb_printf(b, "%c", c);
        else
            sb_printf(b, "\\x%02x", c);
    }
    sb_printf(b, "\"");
}

static unsigned char pattern_byte(size_t i) { return (unsigned char)(i % 251); }

/* A page that is never readable or writable: the kernel answers EFAULT for it, and a
 * shim that copies through it instead of letting the kernel check would crash. */
static void *bad_page(void)
{
    static void *p;
    if (!p) {
        p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap: %s", strerror(errno));
    }
    return p;
}

/* ---------- slots ---------- */

struct slot {
    char name[32];
    int fd;
    int open; /* cleared by close; the stale number stays usable as an argument */
    struct sockaddr_storage local;
    socklen_t locallen;
    int has_local;
};
static struct slot slots[MAXSLOTS];
static int nslots;

static struct slot *find_slot(const char *name)
{
    for (int i = 0; i < nslots; i++)
        if (!strcmp(slots[i].name, name))
            return &slots[i];
    return NULL;
}

static int valid_name(const char *s)
{
    if (!islower((unsigned char)*s))
        return 0;
    for (; *s; s++)
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

static struct slot *set_slot(const char *name, int fd)
{
    if (!valid_name(name) || strlen(name) >= sizeof slots[0].name)
        die("bad slot name '%s'", name);
    struct slot *s = find_slot(name);
    if (s && s->open)
        die("slot %s is still open; close it before reusing the name", name);
    if (!s) {
        if (nslots == MAXSLOTS)
            die("too many slots");
        s = &slots[nslots++];
        snprintf(s->name, sizeof s->name, "%s", name);
    }
    s->fd = fd;
    s->open = 1;
    s->has_local = 0;
    return s;
}

/* Any open slot may hold the fd (after dup2 onto a slot, two may); the first wins. */
static const char *fd_label(int fd)
{
    for (int i = 0; i < nslots; i++)
        if (slots[i].open && slots[i].fd == fd)
            return slots[i].name;
    return "fd";
}

static int fd_arg(const char *t)
{
    long v;
    if (!parse_long(t, &v))
        return (int)v;
    struct slot *s = find_slot(t);
    if (!s)
        die("unknown slot '%s'", t);
    return s->fd;
}

/* Records the slot's local address (bookkeeping, not traced) so later "@slot" arguments
 * and port normalization work. Deliberately through libc: the shim must answer it. */
static void refresh_local(const char *tok)
{
    struct slot *s = find_slot(tok);
    if (!s || !s->open)
        return;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(s->fd, (struct sockaddr *)&ss, &len) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
        s->local = ss;
        s->locallen = len;
        s->has_local = 1;
    }
}

static int addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

/* ---------- address mapping (DIFF_ADDR_*: see the top comment) ---------- */

#define MAXALIASES 8
enum addr_role { FOR_BIND, FOR_CONNECT };
static struct in_addr map_bind, map_connect, aliases[MAXALIASES];
static int have_map_bind, have_map_connect, naliases;

static void parse_ipv4_var(const char *var, struct in_addr *out, int *have)
{
    const char *v = getenv(var);
    if (!v)
        return;
    if (inet_pton(AF_INET, v, out) != 1)
        die("%s='%s' is not an IPv4 address", var, v);
    *have = 1;
}

static void load_addr_mapping(void)
{
    parse_ipv4_var("DIFF_ADDR_BIND", &map_bind, &have_map_bind);
    parse_ipv4_var("DIFF_ADDR_CONNECT", &map_connect, &have_map_connect);
    const char *v = getenv("DIFF_ADDR_ALIASES");
    if (!v)
        return;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *ip = strtok_r(buf, ",", &save); ip; ip = strtok_r(NULL, ",", &save)) {
        if (naliases == MAXALIASES || inet_pton(AF_INET, ip, &aliases[naliases]) != 1)
            die("DIFF_ADDR_ALIASES: bad or too many addresses ('%s')", ip);
        naliases++;
    }
}

static int is_alias(struct in_addr a)
{
    for (int i = 0; i < naliases; i++)
        if (aliases[i].s_addr == a.s_addr)
            return 1;
    return 0;
}

/* Only stream sockets move: UDP stays on the kernel under ustack, and the mapped
 * addresses belong to stackd there. */
static void map_addr(int fd, struct sockaddr_storage *ss, enum addr_role role)
{
    int type = 0;
    socklen_t tlen = sizeof type;
    if (ss->ss_family != AF_INET || (!have_map_bind && !have_map_connect)
        || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) || type != SOCK_STREAM)
        return;
    struct in_addr *a = &((struct sockaddr_in *)ss)->sin_addr;
    int loopback = a->s_addr == htonl(INADDR_LOOPBACK);
    if (role == FOR_BIND && have_map_bind && loopback)
        *a = map_bind;
    else if (role == FOR_CONNECT && have_map_connect
             && (loopback || a->s_addr == htonl(INADDR_ANY)
                 || (have_map_bind && a->s_addr == map_bind.s_addr)))
        *a = map_connect;
}

/* Ports are ephemeral: name them after the slot bound to them (open slots first, so a
 * reused port is attributed to its current owner), otherwise "*". */
static void put_port(struct sb *b, int port)
{
    if (port == 0) {
        sb_printf(b, "0");
        return;
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < nslots; i++)
            if (slots[i].open == !pass && slots[i].has_local && addr_port(&slots[i].local) == port) {
                sb_printf(b, "@%s", slots[i].name);
                return;
            }
    sb_printf(b, "*");
}

static void put_addr(struct sb *b, const struct sockaddr *sa, socklen_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (len < sizeof(sa_family_t)) {
        sb_printf(b, "none");
        return;
    }
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const void *)sa;
        if (is_alias(in->sin_addr))
            snprintf(ip, sizeof ip, "127.0.0.1");
        else
            inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        sb_printf(b, "%s:", ip);
        put_port(b, ntohs(in->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        sb_printf(b, "[%s]:", ip);
        put_port(b, ntohs(in6->sin6_port));
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const void *)sa;
        size_t plen = len - offsetof(struct sockaddr_un, sun_path);
        if (len <= offsetof(struct sockaddr_un, sun_path))
            sb_printf(b, "unix:unnamed");
        else if (un->sun_path[0] == 0)
            sb_printf(b, "unix:abstract");
        else
            sb_printf(b, "unix:%.*s", (int)strnlen(un->sun_path, plen), un->sun_path);
        break;
    }
    case AF_UNSPEC:
        sb_printf(b, "unspec");
        break;
    default:
        sb_printf(b, "family=%d", sa->sa_family);
    }
    sb_printf(b, " len=%u", (unsigned)len);
}

static const struct slot *addr_slot(const char *name)
{
    const struct slot *s = find_slot(name);
    if (!s)
        die("unknown slot '%s'", name);
    if (!s->has_local)
        die("slot %s has no recorded local address (bind/connect it first)", name);
    return s;
}

/* An expectation written for loopback, in the mapped run's terms: each alias followed by
 * ':' reads 127.0.0.1, as put_addr prints it. The caller frees the result. */
static char *mapped_expectation(const char *expect)
{
    char *out = strdup(expect);
    if (!out)
        die("out of memory");
    for (int i = 0; i < naliases; i++) {
        char ip[INET_ADDRSTRLEN + 1];
        inet_ntop(AF_INET, &aliases[i], ip, INET_ADDRSTRLEN);
        strcat(ip, ":");
        for (char *at; (at = strstr(out, ip));) {
            size_t head = (size_t)(at - out), iplen = strlen(ip);
            char *next = malloc(strlen(out) - iplen + sizeof "127.0.0.1:");
            if (!next)
                die("out of memory");
            sprintf(next, "%.*s127.0.0.1:%s", (int)head, out, at + iplen);
            free(out);
            out = next;
            if (!strcmp(ip, "127.0.0.1:"))
                break;
        }
    }
    return out;
}

/* Returns 0 for a NULL address ("none"). */
static int parse_addr_raw(const char *t, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (!strcmp(t, "none")) {
        *len = 0;
        return 0;
    }
    if (!strcmp(t, "unspec")) {
        ss->ss_family = AF_UNSPEC;
        *len = sizeof(struct sockaddr);
        return 1;
    }
    if (t[0] == '@') {
        const struct slot *s = addr_slot(t + 1);
        *ss = s->local;
        *len = s->locallen;
        return 1;
    }
    char host[128];
    const char *colon;
    int v6 = t[0] == '[';
    if (v6) {
        const char *close = strchr(t, ']');
        if (!close || close[1] != ':' || (size_t)(close - t - 1) >= sizeof host)
            die("bad address '%s'", t);
        memcpy(host, t + 1, (size_t)(close - t - 1));
        host[close - t - 1] = 0;
        colon = close + 1;
    } else {
        colon = strrchr(t, ':');
        if (!colon || (size_t)(colon - t) >= sizeof host)
            die("bad address '%s' (want IP:PORT, [IP6]:PORT, @slot, unspec, none)", t);
        memcpy(host, t, (size_t)(colon - t));
        host[colon - t] = 0;
    }
    long port;
    if (colon[1] == '@')
        port = addr_port(&addr_slot(colon + 2)->local);
    else
        port = need_long(colon + 1, "port");
    if (v6) {
        struct sockaddr_in6 *in6 = (void *)ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            die("bad IPv6 address '%s'", host);
        *len = sizeof *in6;
    } else {
        struct sockaddr_in *in = (void *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            die("bad IPv4 address '%s'", host);
        *len = sizeof *in;
    }
    return 1;
}

/* `fd` is the socket the address is for (only stream sockets are mapped). */
static int parse_addr(int fd, const char *t, struct sockaddr_storage *ss, socklen_t *len,
                      enum addr_role role)
{
    int have = parse_addr_raw(t, ss, len);
    if (have)
        map_addr(fd, ss, role);
    return have;
}

/* ---------- statement model ---------- */

struct tok {
    char *s;
    size_t n;
    int quoted;
};

struct stmt {
    int line;
    char *names[2];
    int nnames;
    const char *cmd;
    struct tok *args;
    int nargs;
    struct sb echo;
    struct sb res;
};

static const char *arg(struct stmt *st, int i, const char *what)
{
    if (i >= st->nargs)
        die("%s: missing argument: %s", st->cmd, what);
    return st->args[i].s;
}

/* "len=N" anywhere among the arguments overrides an address or option length. */
static int opt_len(struct stmt *st, long *len)
{
    for (int i = 0; i < st->nargs; i++)
        if (!st->args[i].quoted && !strncmp(st->args[i].s, "len=", 4)) {
            *len = need_long(st->args[i].s + 4, "len=");
            return 1;
        }
    return 0;
}

static int has_word(struct stmt *st, int from, const char *w)
{
    for (int i = from; i < st->nargs; i++)
        if (!st->args[i].quoted && !strcmp(st->args[i].s, w))
            return 1;
    return 0;
}

static void res_err(struct stmt *st, long rc, int err)
{
    sb_printf(&st->res, "%ld %s", rc, ename(err));
}

static void res_int(struct stmt *st, long rc, int err)
{
    if (rc < 0)
        res_err(st, rc, err);
    else
        sb_printf(&st->res, "%ld", rc);
}

/* A call that returns an fd: the result names the slot, never the number. */
static void res_fd(struct stmt *st, long rc, int err)
{
    if (rc < 0) {
        res_err(st, rc, err);
        return;
    }
    if (st->nnames) {
        set_slot(st->names[0], (int)rc);
        sb_printf(&st->res, "%s", st->names[0]);
    } else {
        sb_printf(&st->res, "%s", fd_label((int)rc));
    }
}

struct named {
    const char *name;
    long val;
};

/* Parses NAME|NAME|number against a table (numbers pass through, for invalid values). */
static long parse_bits(const char *t, const struct named *tab, const char *what)
{
    long v = 0, n;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", t);
    for (char *save = NULL, *p = strtok_r(buf, "|", &save); p; p = strtok_r(NULL, "|", &save)) {
        int found = 0;
        for (const struct named *e = tab; e->name; e++)
            if (!strcmp(e->name, p)) {
                v |= e->val;
                found = 1;
                break;
            }
        if (!found) {
            if (parse_long(p, &n))
                die("unknown %s '%s'", what, p);
            v |= n;
        }
    }
    return v;
}

static int is_bits(const char *t, const struct named *tab)
{
    char buf[256];
    long n;
    snprintf(buf, sizeof buf, "%s", t);
    for (char *save = NULL, *p = strtok_r(buf, "|", &save); p; p = strtok_r(NULL, "|", &save)) {
        int found = !parse_long(p, &n);
        for (const struct named *e = tab; e->name && !found; e++)
            found = !strcmp(e->name, p);
        if (!found)
            return 0;
    }
    return 1;
}

static void put_bits(struct sb *b, unsigned long v, const struct named *tab)
{
    int first = 1;
    if (!v) {
        sb_printf(b, "0");
        return;
    }
    for (const struct named *e = tab; e->name; e++)
        if (e->val && (v & (unsigned long)e->val) == (unsigned long)e->val) {
            sb_printf(b, "%s%s", first ? "" : "|", e->name);
            v &= ~(unsigned long)e->val;
            first = 0;
        }
    if (v)
        sb_printf(b, "%s0x%lx", first ? "" : "|", v);
}

static const struct named msgflag_tab[] = {
    {"peek", MSG_PEEK}, {"waitall", MSG_WAITALL}, {"trunc", MSG_TRUNC},
    {"dontwait", MSG_DONTWAIT}, {"nosignal", MSG_NOSIGNAL}, {"oob", MSG_OOB},
    {"more", MSG_MORE}, {"ctrunc", MSG_CTRUNC}, {"eor", MSG_EOR},
    {"errqueue", MSG_ERRQUEUE}, {NULL, 0}};

static const struct named sockflag_tab[] = {
    {"nonblock", SOCK_NONBLOCK}, {"cloexec", SOCK_CLOEXEC}, {NULL, 0}};

static const struct named type_tab[] = {
    {"stream", SOCK_STREAM}, {"dgram", SOCK_DGRAM}, {"seqpacket", SOCK_SEQPACKET},
    {"raw", SOCK_RAW}, {"nonblock", SOCK_NONBLOCK}, {"cloexec", SOCK_CLOEXEC}, {NULL, 0}};

static const struct named family_tab[] = {
    {"inet", AF_INET}, {"inet6", AF_INET6}, {"unix", AF_UNIX}, {"unspec", AF_UNSPEC}, {NULL, 0}};

static const struct named proto_tab[] = {
    {"tcp", IPPROTO_TCP}, {"udp", IPPROTO_UDP}, {NULL, 0}};

static const struct named oflag_tab[] = {
    {"O_NONBLOCK", O_NONBLOCK}, {"O_APPEND", O_APPEND}, {"O_ASYNC", O_ASYNC},
    {"O_LARGEFILE", O_LARGEFILE}, {"O_NOATIME", O_NOATIME}, {"O_DIRECT", O_DIRECT},
    {"O_CLOEXEC", O_CLOEXEC}, {NULL, 0}};

static const struct named setfl_tab[] = {
    {"nonblock", O_NONBLOCK}, {"append", O_APPEND}, {"async", O_ASYNC}, {NULL, 0}};

static const struct named epev_tab[] = {
    {"in", EPOLLIN}, {"out", EPOLLOUT}, {"pri", EPOLLPRI}, {"err", EPOLLERR},
    {"hup", EPOLLHUP}, {"rdhup", EPOLLRDHUP}, {"rdnorm", EPOLLRDNORM},
    {"rdband", EPOLLRDBAND}, {"wrnorm", EPOLLWRNORM}, {"wrband", EPOLLWRBAND},
    {"msg", EPOLLMSG}, {"et", EPOLLET}, {"oneshot", EPOLLONESHOT},
    {"exclusive", EPOLLEXCLUSIVE}, {"wakeup", EPOLLWAKEUP}, {NULL, 0}};

static const struct named pollev_tab[] = {
    {"in", POLLIN}, {"out", POLLOUT}, {"pri", POLLPRI}, {"err", POLLERR},
    {"hup", POLLHUP}, {"nval", POLLNVAL}, {"rdhup", POLLRDHUP}, {"rdnorm", POLLRDNORM},
    {"rdband", POLLRDBAND}, {"wrnorm", POLLWRNORM}, {"wrband", POLLWRBAND}, {NULL, 0}};

/* DATA argument: "text", pattern:N, zeros:N, badptr:N. Returned buffer is owned by caller
 * unless it is the bad page. */
static const void *parse_data(const struct tok *t, size_t *n, int *owned)
{
    long len;
    *owned = 0;
    if (t->quoted) {
        *n = t->n;
        return t->s;
    }
    if (!strncmp(t->s, "pattern:", 8) || !strncmp(t->s, "zeros:", 6)) {
        int pat = t->s[0] == 'p';
        len = need_long(strchr(t->s, ':') + 1, "data length");
        unsigned char *p = calloc(1, (size_t)len + 1);
        if (!p)
            die("out of memory");
        for (long i = 0; pat && i < len; i++)
            p[i] = pattern_byte((size_t)i);
        *n = (size_t)len;
        *owned = 1;
        return p;
    }
    if (!strncmp(t->s, "badptr:", 7)) {
        *n = (size_t)need_long(t->s + 7, "badptr length");
        return bad_page();
    }
    die("bad DATA '%s' (want \"text\", pattern:N, zeros:N or badptr:N)", t->s);
}

/* Receive buffer with a guard zone: a shim that copies more than asked is caught. */
#define GUARD 64
static unsigned char *rbuf_new(size_t n)
{
    unsigned char *p = malloc(n + GUARD);
    if (!p)
        die("out of memory");
    memset(p, 0, n);
    memset(p + n, 0xA5, GUARD);
    return p;
}

static void rbuf_check(struct stmt *st, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < GUARD; i++)
        if (p[n + i] != 0xA5) {
            sb_printf(&st->res, " !!GUARD-OVERWRITTEN");
            return;
        }
}

/* Result of a read-like call: count and the bytes it put in the buffer. For MSG_TRUNC the
 * count may exceed the buffer; only what fits is shown. */
static void res_data(struct stmt *st, long rc, int err, const unsigned char *buf, size_t cap)
{
    res_int(st, rc, err);
    if (rc > 0 && buf) {
        sb_printf(&st->res, " ");
        put_data(&st->res, buf, (size_t)rc < cap ? (size_t)rc : cap);
    }
}

/* ---------- commands: sockets ---------- */

static void c_socket(struct stmt *st)
{
    int fam = (int)parse_bits(arg(st, 0, "family"), family_tab, "family");
    int type = (int)parse_bits(arg(st, 1, "type"), type_tab, "type");
    int proto = st->nargs > 2 ? (int)parse_bits(st->args[2].s, proto_tab, "protocol") : 0;
    errno = 0;
    int rc = socket(fam, type, proto);
    res_fd(st, rc, errno);
}

static void c_socketpair(struct stmt *st)
{
    int sv[2];
    int fam = (int)parse_bits(arg(st, 0, "family"), family_tab, "family");
    int type = (int)parse_bits(arg(st, 1, "type"), type_tab, "type");
    if (st->nnames != 2)
        die("socketpair needs two names: a b = socketpair ...");
    errno = 0;
    int rc = socketpair(fam, type, 0, sv);
    if (rc < 0) {
        res_err(st, rc, errno);
        return;
    }
    set_slot(st->names[0], sv[0]);
    set_slot(st->names[1], sv[1]);
    sb_printf(&st->res, "%s %s", st->names[0], st->names[1]);
}

static void c_pipe(struct stmt *st)
{
    int p[2];
    if (st->nnames != 2)
        die("pipe needs two names: r w = pipe");
    errno = 0;
    int rc = pipe(p);
    if (rc < 0) {
        res_err(st, rc, errno);
        return;
    }
    set_slot(st->names[0], p[0]);
    set_slot(st->names[1], p[1]);
    sb_printf(&st->res, "%s %s", st->names[0], st->names[1]);
}

static void c_tmpfile(struct stmt *st)
{
    char path[] = "/tmp/ringshim-diff-XXXXXX";
    errno = 0;
    int rc = mkstemp(path);
    if (rc >= 0)
        unlink(path);
    res_fd(st, rc, errno);
}

static void c_bind_connect(struct stmt *st)
{
    struct sockaddr_storage ss;
    socklen_t len;
    long l;
    int fd = fd_arg(arg(st, 0, "fd"));
    int have = parse_addr(fd, arg(st, 1, "address"), &ss, &len,
                          st->cmd[0] == 'b' ? FOR_BIND : FOR_CONNECT);
    if (opt_len(st, &l))
        len = (socklen_t)l;
    errno = 0;
    int rc = st->cmd[0] == 'b' ? bind(fd, have ? (struct sockaddr *)&ss : NULL, len)
                               : connect(fd, have ? (struct sockaddr *)&ss : NULL, len);
    int err = errno;
    res_int(st, rc, err);
    refresh_local(st->args[0].s);
}

static void c_listen(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    int backlog = (int)need_long(arg(st, 1, "backlog"), "backlog");
    errno = 0;
    int rc = listen(fd, backlog);
    res_int(st, rc, errno);
    refresh_local(st->args[0].s); /* listen on an unbound socket picks a port */
}

static void c_accept(struct stmt *st)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = fd_arg(arg(st, 0, "fd"));
    int is4 = !strcmp(st->cmd, "accept4");
    int flags = is4 ? (int)parse_bits(arg(st, 1, "flags"), sockflag_tab, "accept4 flag") : 0;
    memset(&ss, 0, sizeof ss);
    errno = 0;
    int rc = is4 ? accept4(fd, (struct sockaddr *)&ss, &len, flags) : accept(fd, (struct sockaddr *)&ss, &len);
    int err = errno;
    res_fd(st, rc, err);
    if (rc >= 0) {
        if (st->nnames)
            refresh_local(st->names[0]);
        sb_printf(&st->res, " peer=");
        put_addr(&st->res, (struct sockaddr *)&ss, len);
    }
}

static void c_shutdown(struct stmt *st)
{
    static const struct named how_tab[] = {{"rd", SHUT_RD}, {"wr", SHUT_WR}, {"rdwr", SHUT_RDWR}, {NULL, 0}};
    int fd = fd_arg(arg(st, 0, "fd"));
    const char *h = arg(st, 1, "how");
    long how = -1;
    for (const struct named *e = how_tab; e->name; e++)
        if (!strcmp(e->name, h))
            how = e->val;
    if (how < 0)
        how = need_long(h, "how");
    errno = 0;
    int rc = shutdown(fd, (int)how);
    res_int(st, rc, errno);
}

static void c_close(struct stmt *st)
{
    const char *t = arg(st, 0, "fd");
    int fd = fd_arg(t);
    errno = 0;
    int rc = close(fd);
    int err = errno;
    res_int(st, rc, err);
    /* The slot is closed whatever close() returned: POSIX leaves the fd state unspecified
     * on error, Linux always releases it. Only the named slot is marked; a number literal
     * may alias an open slot, which then keeps its (now stale) number. */
    struct slot *s = find_slot(t);
    if (s)
        s->open = 0;
}

static void c_getname(struct stmt *st)
{
    struct sockaddr_storage ss;
    long l;
    socklen_t inlen = sizeof ss, len;
    int fd = fd_arg(arg(st, 0, "fd"));
    if (opt_len(st, &l))
        inlen = (socklen_t)l;
    len = inlen;
    memset(&ss, 0, sizeof ss);
    errno = 0;
    int rc = !strcmp(st->cmd, "getsockname") ? getsockname(fd, (struct sockaddr *)&ss, &len)
                                             : getpeername(fd, (struct sockaddr *)&ss, &len);
    int err = errno;
    res_int(st, rc, err);
    if (rc == 0) {
        sb_printf(&st->res, " ");
        if (len > inlen)
            sb_printf(&st->res, "truncated len=%u", (unsigned)len);
        else
            put_addr(&st->res, (struct sockaddr *)&ss, len);
    }
}

/* ---------- commands: data ---------- */

static int msgflags_at(struct stmt *st, int from)
{
    int flags = 0;
    for (int i = from; i < st->nargs; i++)
        if (!st->args[i].quoted && is_bits(st->args[i].s, msgflag_tab))
            flags |= (int)parse_bits(st->args[i].s, msgflag_tab, "message flag");
    return flags;
}

static void c_send(struct stmt *st)
{
    size_t n;
    int owned;
    int fd = fd_arg(arg(st, 0, "fd"));
    arg(st, 1, "data");
    const void *d = parse_data(&st->args[1], &n, &owned);
    long rc;
    errno = 0;
    if (!strcmp(st->cmd, "write")) {
        rc = write(fd, d, n);
    } else if (!strcmp(st->cmd, "send")) {
        rc = send(fd, d, n, msgflags_at(st, 2));
    } else { /* sendto FD DATA ADDR [len=N] [FLAGS] */
        struct sockaddr_storage ss;
        socklen_t len;
        long l;
        int have = parse_addr(fd, arg(st, 2, "address"), &ss, &len, FOR_CONNECT);
        if (opt_len(st, &l))
            len = (socklen_t)l;
        errno = 0;
        rc = sendto(fd, d, n, msgflags_at(st, 3), have ? (struct sockaddr *)&ss : NULL, len);
    }
    res_int(st, rc, errno);
    if (owned)
        free((void *)d);
    if (strcmp(st->cmd, "write"))
        refresh_local(st->args[0].s); /* sendto autobinds an unbound UDP socket */
}

static void c_recv(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    size_t n = (size_t)need_long(arg(st, 1, "length"), "length");
    int bad = has_word(st, 2, "badbuf");
    unsigned char *buf = rbuf_new(n);
    void *target = bad ? bad_page() : buf;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    long rc;
    memset(&ss, 0, sizeof ss);
    errno = 0;
    if (!strcmp(st->cmd, "read"))
        rc = read(fd, target, n);
    else if (!strcmp(st->cmd, "recv"))
        rc = recv(fd, target, n, msgflags_at(st, 2));
    else
        rc = recvfrom(fd, target, n, msgflags_at(st, 2), (struct sockaddr *)&ss, &len);
    int err = errno;
    res_data(st, rc, err, bad ? NULL : buf, n);
    if (rc >= 0 && !strcmp(st->cmd, "recvfrom")) {
        sb_printf(&st->res, " from=");
        put_addr(&st->res, (struct sockaddr *)&ss, len);
    }
    rbuf_check(st, buf, n);
    free(buf);
}

/* "3,3,4" -> iovec lengths */
static int parse_lens(const char *t, size_t *lens, int max)
{
    char buf[256];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", t);
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (n == max)
            die("too many iovecs");
        lens[n++] = (size_t)need_long(p, "iovec length");
    }
    return n;
}

static void put_iovs(struct stmt *st, long rc, struct iovec *iov, int n)
{
    size_t left = rc > 0 ? (size_t)rc : 0;
    sb_printf(&st->res, " [");
    for (int i = 0; i < n; i++) {
        size_t k = left < iov[i].iov_len ? left : iov[i].iov_len;
        sb_printf(&st->res, i ? " " : "");
        put_data(&st->res, iov[i].iov_base, k);
        left -= k;
    }
    sb_printf(&st->res, "]");
}

static void c_readv_recvmsg(struct stmt *st)
{
    size_t lens[16];
    struct iovec iov[16];
    unsigned char *bufs[16];
    int fd = fd_arg(arg(st, 0, "fd"));
    int n = parse_lens(arg(st, 1, "lengths"), lens, 16);
    for (int i = 0; i < n; i++) {
        bufs[i] = rbuf_new(lens[i]);
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = lens[i];
    }
    long rc;
    struct msghdr mh;
    struct sockaddr_storage ss;
    memset(&mh, 0, sizeof mh);
    memset(&ss, 0, sizeof ss);
    errno = 0;
    if (!strcmp(st->cmd, "readv")) {
        rc = readv(fd, iov, n);
    } else {
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        if (has_word(st, 2, "name")) {
            mh.msg_name = &ss;
            mh.msg_namelen = sizeof ss;
        }
        rc = recvmsg(fd, &mh, msgflags_at(st, 2));
    }
    int err = errno;
    res_int(st, rc, err);
    if (rc >= 0) {
        put_iovs(st, rc, iov, n);
        if (!strcmp(st->cmd, "recvmsg")) {
            sb_printf(&st->res, " flags=");
            put_bits(&st->res, (unsigned)mh.msg_flags, msgflag_tab);
            if (mh.msg_name) {
                sb_printf(&st->res, " from=");
                put_addr(&st->res, (struct sockaddr *)&ss, mh.msg_namelen);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        rbuf_check(st, bufs[i], lens[i]);
        free(bufs[i]);
    }
}

static void c_writev_sendmsg(struct stmt *st)
{
    struct iovec iov[16];
    int owned[16];
    int n = 0;
    int fd = fd_arg(arg(st, 0, "fd"));
    struct sockaddr_storage ss;
    socklen_t len = 0;
    int have_to = 0;
    for (int i = 1; i < st->nargs; i++) {
        struct tok *t = &st->args[i];
        if (!t->quoted && !strncmp(t->s, "to=", 3)) {
            have_to = parse_addr(fd, t->s + 3, &ss, &len, FOR_CONNECT);
            continue;
        }
        if (!t->quoted && is_bits(t->s, msgflag_tab))
            continue;
        if (n == 16)
            die("too many iovecs");
        iov[n].iov_base = (void *)parse_data(t, &iov[n].iov_len, &owned[n]);
        n++;
    }
    long rc;
    errno = 0;
    if (!strcmp(st->cmd, "writev")) {
        rc = writev(fd, iov, n);
    } else {
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        if (have_to) {
            mh.msg_name = &ss;
            mh.msg_namelen = len;
        }
        rc = sendmsg(fd, &mh, msgflags_at(st, 1));
    }
    res_int(st, rc, errno);
    for (int i = 0; i < n; i++)
        if (owned[i])
            free(iov[i].iov_base);
    refresh_local(st->args[0].s);
}

/* Moves N pattern bytes SRC -> DST through one epoll instance, as an event loop would.
 * Only totals and integrity are printed: how the bytes were chunked legitimately varies. */
static void c_transfer(struct stmt *st)
{
    int src = fd_arg(arg(st, 0, "src")), dst = fd_arg(arg(st, 1, "dst"));
    size_t total = (size_t)need_long(arg(st, 2, "bytes"), "bytes");
    size_t sent = 0, got = 0;
    static unsigned char chunk[65536 + 251];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = pattern_byte(i);
    if (!(fcntl(src, F_GETFL) & O_NONBLOCK) || !(fcntl(dst, F_GETFL) & O_NONBLOCK))
        die("transfer needs both sockets non-blocking (fcntl X setfl nonblock)");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = 1};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, src, &ev) < 0) {
        sb_printf(&st->res, "setup %s", ename(errno));
        return;
    }
    ev.events = EPOLLIN;
    ev.data.u32 = 2;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, dst, &ev) < 0) {
        sb_printf(&st->res, "setup %s", ename(errno));
        close(ep);
        return;
    }
    int src_registered = 1;
    const char *fail = NULL;
    int fail_err = 0;
    while (got < total && !fail) {
        struct epoll_event evs[2];
        int n = epoll_wait(ep, evs, 2, WAIT_MS);
        if (n < 0) {
            fail = "epoll_wait", fail_err = errno;
            break;
        }
        if (n == 0) {
            fail = "stalled";
            break;
        }
        for (int i = 0; i < n && !fail; i++) {
            if (evs[i].data.u32 == 1 && sent < total) {
                size_t want = total - sent < 65536 ? total - sent : 65536;
                ssize_t w = send(src, chunk + sent % 251, want, 0);
                if (w < 0 && errno != EAGAIN)
                    fail = "send", fail_err = errno;
                else if (w > 0)
                    sent += (size_t)w;
                if (sent == total && src_registered) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, src, NULL);
                    src_registered = 0;
                }
            } else if (evs[i].data.u32 == 2) {
                unsigned char buf[65536];
                ssize_t r = recv(dst, buf, sizeof buf, 0);
                if (r < 0 && errno != EAGAIN)
                    fail = "recv", fail_err = errno;
                else if (r == 0)
                    fail = "early-eof";
                for (ssize_t k = 0; r > 0 && k < r && !fail; k++)
                    if (buf[k] != pattern_byte(got + (size_t)k))
                        fail = "corrupt";
                if (r > 0)
                    got += (size_t)r;
            }
        }
    }
    close(ep);
    if (fail)
        sb_printf(&st->res, "FAILED %s %s sent=%zu received=%zu", fail, ename(fail_err), sent, got);
    else
        sb_printf(&st->res, "sent=%zu received=%zu intact", sent, got);
}

/* ---------- commands: options, fcntl, ioctl, dup ---------- */

enum kind { K_INT, K_LINGER, K_TIMEVAL, K_ERRNO, K_TYPE, K_DOMAIN, K_PROTO };
struct optdef {
    const char *name;
    int level, opt;
    enum kind kind;
};
static const struct optdef opts[] = {
    {"SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR, K_INT},
    {"SO_REUSEPORT", SOL_SOCKET, SO_REUSEPORT, K_INT},
    {"SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, K_INT},
    {"SO_RCVBUF", SOL_SOCKET, SO_RCVBUF, K_INT},
    {"SO_SNDBUF", SOL_SOCKET, SO_SNDBUF, K_INT},
    {"SO_RCVLOWAT", SOL_SOCKET, SO_RCVLOWAT, K_INT},
    {"SO_OOBINLINE", SOL_SOCKET, SO_OOBINLINE, K_INT},
    {"SO_BROADCAST", SOL_SOCKET, SO_BROADCAST, K_INT},
    {"SO_LINGER", SOL_SOCKET, SO_LINGER, K_LINGER},
    {"SO_RCVTIMEO", SOL_SOCKET, SO_RCVTIMEO, K_TIMEVAL},
    {"SO_SNDTIMEO", SOL_SOCKET, SO_SNDTIMEO, K_TIMEVAL},
    {"SO_ERROR", SOL_SOCKET, SO_ERROR, K_ERRNO},
    {"SO_TYPE", SOL_SOCKET, SO_TYPE, K_TYPE},
    {"SO_DOMAIN", SOL_SOCKET, SO_DOMAIN, K_DOMAIN},
    {"SO_PROTOCOL", SOL_SOCKET, SO_PROTOCOL, K_PROTO},
    {"SO_ACCEPTCONN", SOL_SOCKET, SO_ACCEPTCONN, K_INT},
    {"TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY, K_INT},
    {"TCP_CORK", IPPROTO_TCP, TCP_CORK, K_INT},
    {"TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE, K_INT},
    {"TCP_KEEPINTVL", IPPROTO_TCP, TCP_KEEPINTVL, K_INT},
    {"TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT, K_INT},
    {"TCP_USER_TIMEOUT", IPPROTO_TCP, TCP_USER_TIMEOUT, K_INT},
    {"TCP_NOTSENT_LOWAT", IPPROTO_TCP, TCP_NOTSENT_LOWAT, K_INT},
    {"TCP_DEFER_ACCEPT", IPPROTO_TCP, TCP_DEFER_ACCEPT, K_INT},
    {"IPV6_V6ONLY", IPPROTO_IPV6, IPV6_V6ONLY, K_INT},
    {"IP_TOS", IPPROTO_IP, IP_TOS, K_INT},
    {"IP_TTL", IPPROTO_IP, IP_TTL, K_INT},
    {NULL, 0, 0, K_INT}};

static struct optdef lookup_opt(const char *t)
{
    static const struct named level_tab[] = {
        {"sol_socket", SOL_SOCKET}, {"tcp", IPPROTO_TCP}, {"ip", IPPROTO_IP},
        {"ipv6", IPPROTO_IPV6}, {"udp", IPPROTO_UDP}, {NULL, 0}};
    for (const struct optdef *o = opts; o->name; o++)
        if (!strcmp(o->name, t))
            return *o;
    if (!strncmp(t, "raw:", 4)) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", t + 4);
        char *c = strchr(buf, ':');
        if (c) {
            *c = 0;
            struct optdef o = {t, (int)parse_bits(buf, level_tab, "level"), (int)need_long(c + 1, "optname"), K_INT};
            return o;
        }
    }
    die("unknown socket option '%s' (add it to opts[] or use raw:LEVEL:OPTNAME)", t);
}

static socklen_t kind_len(enum kind k)
{
    return k == K_LINGER ? sizeof(struct linger) : k == K_TIMEVAL ? sizeof(struct timeval) : sizeof(int);
}

static const struct named type_names[] = {
    {"SOCK_STREAM", SOCK_STREAM}, {"SOCK_DGRAM", SOCK_DGRAM}, {"SOCK_SEQPACKET", SOCK_SEQPACKET}, {NULL, 0}};
static const struct named domain_names[] = {
    {"AF_INET", AF_INET}, {"AF_INET6", AF_INET6}, {"AF_UNIX", AF_UNIX}, {NULL, 0}};
static const struct named proto_names[] = {
    {"0", 0}, {"IPPROTO_TCP", IPPROTO_TCP}, {"IPPROTO_UDP", IPPROTO_UDP}, {NULL, 0}};

/* An enumerated value by name, or the number when the table does not know it. */
static void put_named(struct sb *b, int v, const struct named *tab)
{
    for (const struct named *e = tab; e->name; e++)
        if (e->val == v) {
            sb_printf(b, "%s", e->name);
            return;
        }
    sb_printf(b, "%d", v);
}

static void put_optval(struct stmt *st, enum kind k, const unsigned char *buf, socklen_t len)
{
    int v;
    memcpy(&v, buf, sizeof v);
    sb_printf(&st->res, " val=");
    switch (k) {
    case K_LINGER: {
        struct linger l;
        memcpy(&l, buf, sizeof l);
        sb_printf(&st->res, "{%d,%d}", l.l_onoff, l.l_linger);
        break;
    }
    case K_TIMEVAL: {
        struct timeval tv;
        memcpy(&tv, buf, sizeof tv);
        sb_printf(&st->res, "{%ld,%ld}", (long)tv.tv_sec, (long)tv.tv_usec);
        break;
    }
    case K_ERRNO:
        sb_printf(&st->res, "%s", ename(v));
        break;
    case K_TYPE:
        put_named(&st->res, v, type_names);
        break;
    case K_DOMAIN:
        put_named(&st->res, v, domain_names);
        break;
    case K_PROTO:
        put_named(&st->res, v, proto_names);
        break;
    default:
        sb_printf(&st->res, "%d", v);
    }
    sb_printf(&st->res, " len=%u", (unsigned)len);
}

static void c_sockopt(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    struct optdef o = lookup_opt(arg(st, 1, "option"));
    unsigned char buf[64];
    long l;
    socklen_t len = kind_len(o.kind);
    memset(buf, 0, sizeof buf);
    if (!strcmp(st->cmd, "setsockopt")) {
        const char *v = arg(st, 2, "value");
        const char *comma = strchr(v, ',');
        if (o.kind == K_LINGER || o.kind == K_TIMEVAL) {
            if (!comma)
                die("%s wants A,B", o.name);
            char a[64];
            snprintf(a, sizeof a, "%.*s", (int)(comma - v), v);
            long x = !strcmp(a, "on") ? 1 : !strcmp(a, "off") ? 0 : need_long(a, "value");
            long y = need_long(comma + 1, "value");
            if (o.kind == K_LINGER) {
                struct linger lg = {(int)x, (int)y};
                memcpy(buf, &lg, sizeof lg);
            } else {
                struct timeval tv = {x, y};
                memcpy(buf, &tv, sizeof tv);
            }
        } else {
            int x = !strcmp(v, "on") ? 1 : !strcmp(v, "off") ? 0 : (int)need_long(v, "value");
            memcpy(buf, &x, sizeof x);
        }
        if (opt_len(st, &l))
            len = (socklen_t)l;
        errno = 0;
        int rc = setsockopt(fd, o.level, o.opt, buf, len);
        res_int(st, rc, errno);
    } else {
        if (opt_len(st, &l))
            len = (socklen_t)l;
        errno = 0;
        int rc = getsockopt(fd, o.level, o.opt, buf, &len);
        int err = errno;
        res_int(st, rc, err);
        if (rc == 0)
            put_optval(st, o.kind, buf, len);
    }
}

static void c_fcntl(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    const char *op = arg(st, 1, "operation");
    long rc;
    errno = 0;
    if (!strcmp(op, "getfl")) {
        rc = fcntl(fd, F_GETFL);
        if (rc < 0) {
            res_err(st, rc, errno);
            return;
        }
        int acc = (int)rc & O_ACCMODE;
        sb_printf(&st->res, "%s", acc == O_RDONLY ? "O_RDONLY" : acc == O_WRONLY ? "O_WRONLY" : "O_RDWR");
        if (rc & ~O_ACCMODE) {
            sb_printf(&st->res, "|");
            put_bits(&st->res, (unsigned long)(rc & ~O_ACCMODE), oflag_tab);
        }
    } else if (!strcmp(op, "setfl")) {
        rc = fcntl(fd, F_SETFL, (int)parse_bits(arg(st, 2, "flags"), setfl_tab, "flag"));
        res_int(st, rc, errno);
    } else if (!strcmp(op, "getfd")) {
        rc = fcntl(fd, F_GETFD);
        if (rc < 0)
            res_err(st, rc, errno);
        else
            sb_printf(&st->res, "%s", rc == FD_CLOEXEC ? "FD_CLOEXEC" : rc == 0 ? "0" : "?");
    } else if (!strcmp(op, "setfd")) {
        const char *v = arg(st, 2, "flags");
        rc = fcntl(fd, F_SETFD, !strcmp(v, "cloexec") ? FD_CLOEXEC : (int)need_long(v, "flags"));
        res_int(st, rc, errno);
    } else if (!strcmp(op, "dupfd") || !strcmp(op, "dupfd_cloexec")) {
        int min = (int)need_long(arg(st, 2, "minimum fd"), "minimum fd");
        rc = fcntl(fd, op[5] ? F_DUPFD_CLOEXEC : F_DUPFD, min);
        int err = errno;
        res_fd(st, rc, err);
    } else {
        die("unknown fcntl operation '%s'", op);
    }
}

static void c_ioctl(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    const char *op = arg(st, 1, "request");
    int v = 0, rc;
    errno = 0;
    if (!strcmp(op, "fionread")) {
        rc = ioctl(fd, FIONREAD, &v);
    } else if (!strcmp(op, "fionbio")) {
        v = (int)need_long(arg(st, 2, "value"), "value");
        rc = ioctl(fd, FIONBIO, &v);
    } else if (!strncmp(op, "raw:", 4)) {
        rc = ioctl(fd, (unsigned long)need_long(op + 4, "request"), &v);
    } else {
        die("unknown ioctl '%s'", op);
    }
    int err = errno;
    res_int(st, rc, err);
    if (rc == 0 && strcmp(op, "fionbio"))
        sb_printf(&st->res, " val=%d", v);
}

static void copy_local(const char *from_tok, const char *to_name)
{
    struct slot *a = find_slot(from_tok), *b = find_slot(to_name);
    if (a && b && a->has_local) {
        b->local = a->local;
        b->locallen = a->locallen;
        b->has_local = 1;
    }
}

static void c_dup(struct stmt *st)
{
    const char *src_tok = arg(st, 0, "fd");
    int fd = fd_arg(src_tok);
    long rc;
    errno = 0;
    if (!strcmp(st->cmd, "dup")) {
        rc = dup(fd);
    } else {
        const char *tt = arg(st, 1, "target");
        int target = fd_arg(tt);
        if (!strcmp(st->cmd, "dup2")) {
            rc = dup2(fd, target);
        } else {
            static const struct named dup3_tab[] = {{"cloexec", O_CLOEXEC}, {NULL, 0}};
            int flags = st->nargs > 2 ? (int)parse_bits(st->args[2].s, dup3_tab, "dup3 flag") : 0;
            rc = dup3(fd, target, flags);
        }
        int err = errno;
        if (rc >= 0 && !st->nnames) {
            struct slot *t = find_slot(tt);
            if (t) { /* the target slot now names the duplicate */
                t->open = 1;
                sb_printf(&st->res, "%s", tt);
                copy_local(src_tok, tt);
                return;
            }
            sb_printf(&st->res, "%s", rc == target ? tt : "fd");
            return;
        }
        errno = err;
    }
    int err = errno;
    res_fd(st, rc, err);
    if (rc >= 0 && st->nnames)
        copy_local(src_tok, st->names[0]);
}

/* ---------- commands: readiness ---------- */

static void c_epoll_create(struct stmt *st)
{
    static const struct named ec_tab[] = {{"cloexec", EPOLL_CLOEXEC}, {NULL, 0}};
    long rc;
    errno = 0;
    if (!strcmp(st->cmd, "epoll_create"))
        rc = epoll_create(st->nargs ? (int)need_long(st->args[0].s, "size") : 1);
    else
        rc = epoll_create1(st->nargs ? (int)parse_bits(st->args[0].s, ec_tab, "flag") : 0);
    int err = errno;
    res_fd(st, rc, err);
}

/* epoll data = which slot (index + 1) or literal fd (bit 32 set) was registered, so the
 * result can name it without printing fd numbers. */
static uint64_t ev_tag(const char *t)
{
    long v;
    if (!parse_long(t, &v))
        return (1ULL << 32) | (uint32_t)v;
    struct slot *s = find_slot(t);
    if (!s)
        die("unknown slot '%s'", t);
    return (uint64_t)(s - slots) + 1;
}

static void put_tag(struct sb *b, uint64_t tag)
{
    if (tag >> 32)
        sb_printf(b, "%u", (unsigned)tag);
    else if (tag >= 1 && tag <= (uint64_t)nslots)
        sb_printf(b, "%s", slots[tag - 1].name);
    else
        sb_printf(b, "tag?%llx", (unsigned long long)tag);
}

static void c_epoll_ctl(struct stmt *st)
{
    static const struct named op_tab[] = {
        {"add", EPOLL_CTL_ADD}, {"mod", EPOLL_CTL_MOD}, {"del", EPOLL_CTL_DEL}, {NULL, 0}};
    int ep = fd_arg(arg(st, 0, "epoll fd"));
    int op = (int)parse_bits(arg(st, 1, "op"), op_tab, "epoll op");
    const char *ft = arg(st, 2, "fd");
    int fd = fd_arg(ft);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = st->nargs > 3 ? (uint32_t)parse_bits(st->args[3].s, epev_tab, "epoll event") : 0;
    ev.data.u64 = ev_tag(ft);
    errno = 0;
    int rc = epoll_ctl(ep, op, fd, &ev);
    res_int(st, rc, errno);
}

static int cmp_ev(const void *a, const void *b)
{
    const struct epoll_event *x = a, *y = b;
    return x->data.u64 < y->data.u64 ? -1 : x->data.u64 > y->data.u64;
}

static void c_epoll_wait(struct stmt *st)
{
    struct epoll_event evs[64];
    int ep = fd_arg(arg(st, 0, "epoll fd"));
    int max = (int)need_long(arg(st, 1, "maxevents"), "maxevents");
    int timeout = (int)need_long(arg(st, 2, "timeout"), "timeout");
    if (max > 64)
        die("maxevents > 64");
    errno = 0;
    int rc = !strcmp(st->cmd, "epoll_wait") ? epoll_wait(ep, evs, max, timeout)
                                            : epoll_pwait(ep, evs, max, timeout, NULL);
    int err = errno;
    res_int(st, rc, err);
    if (rc < 0)
        return;
    /* Ready-list order is not part of the contract; the set is. */
    qsort(evs, (size_t)rc, sizeof evs[0], cmp_ev);
    sb_printf(&st->res, " [");
    for (int i = 0; i < rc; i++) {
        sb_printf(&st->res, i ? " " : "");
        put_tag(&st->res, evs[i].data.u64);
        sb_printf(&st->res, ":");
        put_bits(&st->res, evs[i].events, epev_tab);
    }
    sb_printf(&st->res, "]");
}

static void c_poll(struct stmt *st)
{
    struct pollfd pfd[32];
    int n = st->nargs - 1;
    if (n < 0 || n > 32)
        die("poll FD:EVENTS... TIMEOUT_MS");
    int timeout = (int)need_long(st->args[n].s, "timeout");
    for (int i = 0; i < n; i++) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", st->args[i].s);
        char *c = strchr(buf, ':');
        if (!c)
            die("poll entry '%s' wants FD:EVENTS", buf);
        *c = 0;
        pfd[i].fd = fd_arg(buf);
        pfd[i].events = (short)parse_bits(c + 1, pollev_tab, "poll event");
        pfd[i].revents = 0;
    }
    errno = 0;
    int rc;
    if (!strcmp(st->cmd, "poll")) {
        rc = poll(pfd, (nfds_t)n, timeout);
    } else {
        struct timespec ts = {timeout / 1000, (long)(timeout % 1000) * 1000000};
        rc = ppoll(pfd, (nfds_t)n, timeout < 0 ? NULL : &ts, NULL);
    }
    int err = errno;
    res_int(st, rc, err);
    if (rc < 0)
        return;
    sb_printf(&st->res, " [");
    for (int i = 0; i < n; i++) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", st->args[i].s);
        *strchr(buf, ':') = 0;
        sb_printf(&st->res, "%s%s:", i ? " " : "", buf);
        if (pfd[i].revents)
            put_bits(&st->res, (unsigned short)pfd[i].revents, pollev_tab);
        else
            sb_printf(&st->res, "-");
    }
    sb_printf(&st->res, "]");
}

static void c_select(struct stmt *st)
{
    fd_set sets[2];
    const char *lists[2] = {NULL, NULL};
    int nfds = 0;
    FD_ZERO(&sets[0]);
    FD_ZERO(&sets[1]);
    if (st->nargs < 1)
        die("select [in=FD,..] [out=FD,..] TIMEOUT_MS");
    for (int i = 0; i < st->nargs - 1; i++) {
        const char *t = st->args[i].s;
        int which = !strncmp(t, "in=", 3) ? 0 : !strncmp(t, "out=", 4) ? 1 : -1;
        if (which < 0)
            die("select argument '%s' wants in= or out=", t);
        lists[which] = strchr(t, '=') + 1;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", lists[which]);
        for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            int fd = fd_arg(p);
            if (fd < 0 || fd >= FD_SETSIZE)
                die("fd out of select range");
            FD_SET(fd, &sets[which]);
            if (fd + 1 > nfds)
                nfds = fd + 1;
        }
    }
    long ms = need_long(st->args[st->nargs - 1].s, "timeout");
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    errno = 0;
    int rc = select(nfds, &sets[0], &sets[1], NULL, &tv);
    int err = errno;
    res_int(st, rc, err);
    if (rc < 0)
        return;
    for (int w = 0; w < 2; w++) {
        if (!lists[w])
            continue;
        sb_printf(&st->res, " %s=[", w ? "out" : "in");
        char buf[256];
        int first = 1;
        snprintf(buf, sizeof buf, "%s", lists[w]);
        for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save))
            if (FD_ISSET(fd_arg(p), &sets[w])) {
                sb_printf(&st->res, "%s%s", first ? "" : ",", p);
                first = 0;
            }
        sb_printf(&st->res, "]");
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Condition waits: they return as soon as the condition holds; the bound only turns a
 * lost event into a visible "timeout" instead of a hang. */
static void c_wait(struct stmt *st)
{
    int fd = fd_arg(arg(st, 0, "fd"));
    if (!strcmp(st->cmd, "wait_bytes")) {
        long want = need_long(arg(st, 1, "bytes"), "bytes");
        long deadline = now_ms() + WAIT_MS;
        for (;;) {
            int v = 0;
            if (ioctl(fd, FIONREAD, &v) < 0) {
                sb_printf(&st->res, "FIONREAD %s", ename(errno));
                return;
            }
            if (v >= want) {
                sb_printf(&st->res, "ok");
                return;
            }
            if (now_ms() > deadline) {
                sb_printf(&st->res, "timeout");
                return;
            }
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    if (!strcmp(st->cmd, "wait_revents")) {
        /* poll() returns at once while the fd is readable, so it cannot wait for a later
         * POLLERR/POLLPRI on an fd that already has data: re-check until all bits are set. */
        short want = (short)parse_bits(arg(st, 1, "events"), pollev_tab, "poll event");
        long deadline = now_ms() + WAIT_MS;
        for (;;) {
            struct pollfd p = {fd, want, 0};
            int rc = poll(&p, 1, WAIT_MS);
            if (rc < 0) {
                sb_printf(&st->res, "-1 %s", ename(errno));
                return;
            }
            if ((p.revents & want) == want) {
                sb_printf(&st->res, "ok");
                return;
            }
            if (now_ms() > deadline) {
                sb_printf(&st->res, "timeout");
                return;
            }
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    short want = !strcmp(st->cmd, "wait_readable") ? POLLIN : POLLOUT;
    struct pollfd p = {fd, want, 0};
    int rc = poll(&p, 1, WAIT_MS);
    if (rc < 0)
        sb_printf(&st->res, "-1 %s", ename(errno));
    else if (rc == 0)
        sb_printf(&st->res, "timeout");
    else
        sb_printf(&st->res, (p.revents & want) ? "ok" : "not-ready");
}

/* ---------- commands: process ---------- */

static void c_sigpipes(struct stmt *st)
{
    sb_printf(&st->res, "%d", (int)sigpipe_count);
    sigpipe_count = 0;
}

static void c_getenv(struct stmt *st)
{
    const char *v = getenv(arg(st, 0, "name"));
    if (v) {
        sb_printf(&st->res, "set ");
        put_data(&st->res, (const unsigned char *)v, strlen(v));
    } else {
        sb_printf(&st->res, "unset");
    }
}

static void c_exit_if_env(struct stmt *st)
{
    if (getenv(arg(st, 0, "name"))) {
        fflush(stdout);
        _exit(0);
    }
    sb_printf(&st->res, "continue");
}

static const struct {
    const char *name;
    void (*fn)(struct stmt *);
} cmds[] = {
    {"socket", c_socket}, {"socketpair", c_socketpair}, {"pipe", c_pipe},
    {"tmpfile", c_tmpfile}, {"bind", c_bind_connect}, {"connect", c_bind_connect},
    {"listen", c_listen}, {"accept", c_accept}, {"accept4", c_accept},
    {"shutdown", c_shutdown}, {"close", c_close}, {"getsockname", c_getname},
    {"getpeername", c_getname}, {"send", c_send}, {"sendto", c_send},
    {"write", c_send}, {"recv", c_recv}, {"recvfrom", c_recv}, {"read", c_recv},
    {"readv", c_readv_recvmsg}, {"recvmsg", c_readv_recvmsg},
    {"writev", c_writev_sendmsg}, {"sendmsg", c_writev_sendmsg},
    {"transfer", c_transfer}, {"setsockopt", c_sockopt}, {"getsockopt", c_sockopt},
    {"fcntl", c_fcntl}, {"ioctl", c_ioctl}, {"dup", c_dup}, {"dup2", c_dup},
    {"dup3", c_dup}, {"epoll_create", c_epoll_create}, {"epoll_create1", c_epoll_create},
    {"epoll_ctl", c_epoll_ctl}, {"epoll_wait", c_epoll_wait}, {"epoll_pwait", c_epoll_wait},
    {"poll", c_poll}, {"ppoll", c_poll}, {"select", c_select},
    {"wait_readable", c_wait}, {"wait_writable", c_wait}, {"wait_bytes", c_wait}, {"wait_revents", c_wait},
    {"sigpipes", c_sigpipes}, {"getenv", c_getenv}, {"exit_if_env", c_exit_if_env},
    {NULL, NULL}};

/* ---------- parsing and main loop ---------- */

static int hexval(int c)
{
    return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
}

/* Splits a line into tokens (quoted strings decoded in place). Returns the expectation
 * text after "=>", or NULL. */
static char *tokenize(char *p, struct tok *toks, int *ntok)
{
    *ntok = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (!*p || *p == '#')
            return NULL;
        if (p[0] == '=' && p[1] == '>' && (p[2] == ' ' || p[2] == '\t' || !p[2])) {
            char *e = p + 2;
            while (*e == ' ' || *e == '\t')
                e++;
            size_t l = strlen(e);
            while (l && (e[l - 1] == ' ' || e[l - 1] == '\t' || e[l - 1] == '\r'))
                e[--l] = 0;
            return e;
        }
        if (*ntok == MAXTOK)
            die("too many tokens");
        struct tok *t = &toks[(*ntok)++];
        if (*p == '"') {
            char *w = ++p;
            t->s = w;
            t->quoted = 1;
            while (*p != '"') {
                if (!*p)
                    die("unterminated string");
                if (*p != '\\') {
                    *w++ = *p++;
                    continue;
                }
                p++;
                switch (*p) {
                case 'n': *w++ = '\n'; p++; break;
                case 'r': *w++ = '\r'; p++; break;
                case 't': *w++ = '\t'; p++; break;
                case '0': *w++ = 0; p++; break;
                case 'x':
                    if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]))
                        die("bad \\x escape");
                    *w++ = (char)(hexval((unsigned char)p[1]) * 16 + hexval((unsigned char)p[2]));
                    p += 3;
                    break;
                case '\\': case '"': *w++ = *p++; break;
                default: die("unknown escape \\%c", *p);
                }
            }
            t->n = (size_t)(w - t->s);
            *w = 0;
            p++;
        } else {
            t->s = p;
            t->quoted = 0;
            while (*p && *p != ' ' && *p != '\t' && *p != '\r')
                p++;
            t->n = (size_t)(p - t->s);
            if (*p)
                *p++ = 0;
        }
    }
}

static void on_alarm(int sig)
{
    /* async-signal-safe: raw write(2), bypassing stdio and any preload's write hook, which
     * may hold a lock the interrupted call owns. */
    char msg[96] = "# TIMEOUT: scenario still running at line ";
    char num[16];
    int n = 0, l = (int)strlen(msg), v = cur_line;
    (void)sig;
    do
        num[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 15);
    while (n)
        msg[l++] = num[--n];
    msg[l++] = '\n';
    syscall(SYS_write, 1, msg, (size_t)l);
    _exit(3);
}

static void on_sigpipe(int sig)
{
    (void)sig;
    sigpipe_count++;
}

static int find_preload(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "libringshim")) {
        *(const char **)data = info->dlpi_name;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCENARIO.scn\n", argv[0]);
        return 2;
    }
    scenario_path = argv[1];
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    /* Whole file read before the first traced call so its fd never shifts slot numbers. */
    char *text = NULL;
    size_t cap = 0, len = 0, r;
    char chunk[4096];
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + r + 1 > cap) {
            cap = (len + r + 1) * 2;
            text = realloc(text, cap);
            if (!text)
                die("out of memory");
        }
        memcpy(text + len, chunk, r);
        len += r;
    }
    fclose(f);
    if (!text)
        die("empty scenario");
    text[len] = 0;

    const char *preload = NULL;
    dl_iterate_phdr(find_preload, &preload);
    fprintf(stderr, "ringshim-diff: preload=%s\n", preload ? preload : "none");

    load_addr_mapping();
    setvbuf(stdout, NULL, _IOLBF, 0); /* a crash or timeout still leaves the trace so far */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_alarm;
    sa.sa_flags = 0;
    sigaction(SIGALRM, &sa, NULL);
    alarm(10);

    const char *base = strrchr(argv[1], '/');
    printf("# trace of %s\n", base ? base + 1 : argv[1]);

    int lineno = 0;
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        cur_line = ++lineno;
        struct tok toks[MAXTOK];
        int ntok;
        char *expect = tokenize(line, toks, &ntok);
        if (!ntok) {
            if (expect)
                die("expectation without a statement");
            continue;
        }
        struct stmt st;
        memset(&st, 0, sizeof st);
        st.line = lineno;
        int c = 0;
        if (ntok >= 3 && !toks[1].quoted && !strcmp(toks[1].s, "=")) {
            st.names[0] = toks[0].s;
            st.nnames = 1;
            c = 2;
        } else if (ntok >= 4 && !toks[2].quoted && !strcmp(toks[2].s, "=")) {
            st.names[0] = toks[0].s;
            st.names[1] = toks[1].s;
            st.nnames = 2;
            c = 3;
        }
        st.cmd = toks[c].s;
        st.args = &toks[c + 1];
        st.nargs = ntok - c - 1;
        for (int i = 0; i < ntok; i++) {
            sb_printf(&st.echo, i ? " " : "");
            if (toks[i].quoted)
                put_data(&st.echo, (unsigned char *)toks[i].s, toks[i].n);
            else
                sb_printf(&st.echo, "%s", toks[i].s);
        }
        for (int i = 0; i < st.nnames; i++)
            if (!valid_name(st.names[i]))
                die("bad slot name '%s'", st.names[i]);
        int found = 0;
        for (int i = 0; cmds[i].name; i++)
            if (!strcmp(cmds[i].name, st.cmd)) {
                sb_printf(&st.res, "%s", "");
                cmds[i].fn(&st);
                found = 1;
                break;
            }
        if (!found)
            die("unknown command '%s'", st.cmd);
        printf("L%d: %s -> %s\n", lineno, st.echo.p, st.res.p);
        char *want = expect ? mapped_expectation(expect) : NULL;
        if (want && strncmp(st.res.p, want, strlen(want))) {
            printf("!! L%d: expected a result starting with '%s'\n", lineno, expect);
            expectation_failed = 1;
        }
        free(want);
        free(st.echo.p);
        free(st.res.p);
    }
    printf("# end\n");
    return expectation_failed ? 4 : 0;
}
