/* dp_seccomp RULES CMD [ARGS...]: install a seccomp filter described by RULES, then
 * exec CMD — the way a container runtime (runc, crun) applies a profile before it
 * starts the container's process.
 *
 * tests/deploy.rs turns deploy/seccomp/ringshim.json into RULES, so the profile can be
 * tried on this host without Docker. The filter is built with libseccomp, which runc
 * and crun use too, loaded with dlopen because only its run-time package
 * (libseccomp2) is installed, not its headers.
 *
 * RULES, one directive a line:
 *   default errno N           default action SCMP_ACT_ERRNO(N)
 *   default allow             default action SCMP_ACT_ALLOW
 *   allow NAME [COND...]      SCMP_ACT_ALLOW for NAME when every COND holds
 *   errno N NAME [COND...]    SCMP_ACT_ERRNO(N) for NAME when every COND holds
 * COND is INDEX:OP:VALUE:VALUETWO with OP one of NE LT LE EQ GE GT MASKED_EQ (for
 * MASKED_EQ, VALUE is the mask and VALUETWO the expected value, as in libseccomp).
 * A NAME unknown on this architecture is skipped, as runc does.
 *
 * Exit status: 125 when the rules are bad or the filter cannot be loaded (nothing was
 * executed), 126 when libseccomp is missing, 127 when CMD cannot be executed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The parts of <seccomp.h> used here (stable ABI of libseccomp 2.x). */
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp {
    unsigned int arg;
    int op; /* enum scmp_compare */
    uint64_t datum_a;
    uint64_t datum_b;
};
#define SCMP_ACT_ALLOW 0x7fff0000U
#define SCMP_ACT_ERRNO(x) (0x00050000U | ((x) & 0x0000ffffU))
#define MAX_CONDS 6 /* libseccomp allows one condition per argument */

static scmp_filter_ctx (*p_init)(uint32_t);
static int (*p_resolve)(const char *);
static int (*p_rule_add_array)(scmp_filter_ctx, uint32_t, int, unsigned int,
                               const struct scmp_arg_cmp *);
static int (*p_load)(scmp_filter_ctx);

static int op_code(const char *op)
{
    static const char *const names[] = {"NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ"};
    for (int i = 0; i < 7; i++)
        if (strcmp(op, names[i]) == 0)
            return i + 1; /* SCMP_CMP_NE == 1 ... SCMP_CMP_MASKED_EQ == 7 */
    return -1;
}

static int fail(int line, const char *what)
{
    fprintf(stderr, "dp_seccomp: rules line %d: %s\n", line, what);
    return 125;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: dp_seccomp RULES CMD [ARGS...]\n");
        return 125;
    }
    void *lib = dlopen("libseccomp.so.2", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dp_seccomp: libseccomp unavailable: %s\n", dlerror());
        return 126;
    }
    p_init = (scmp_filter_ctx(*)(uint32_t))dlsym(lib, "seccomp_init");
    p_resolve = (int (*)(const char *))dlsym(lib, "seccomp_syscall_resolve_name");
    p_rule_add_array = (int (*)(scmp_filter_ctx, uint32_t, int, unsigned int,
                                const struct scmp_arg_cmp *))dlsym(lib, "seccomp_rule_add_array");
    p_load = (int (*)(scmp_filter_ctx))dlsym(lib, "seccomp_load");
    if (!p_init || !p_resolve || !p_rule_add_array || !p_load) {
        fprintf(stderr, "dp_seccomp: libseccomp lacks a needed symbol\n");
        return 126;
    }

    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror("dp_seccomp: rules");
        return 125;
    }
    scmp_filter_ctx ctx = NULL;
    char buf[1024];
    int line = 0, rules = 0, skipped = 0;
    while (fgets(buf, sizeof buf, f)) {
        line++;
        char *save = NULL;
        char *word = strtok_r(buf, " \t\n", &save);
        if (!word || word[0] == '#')
            continue;
        if (strcmp(word, "default") == 0) {
            if (ctx)
                return fail(line, "second default");
            char *kind = strtok_r(NULL, " \t\n", &save);
            uint32_t act;
            if (kind && strcmp(kind, "allow") == 0) {
                act = SCMP_ACT_ALLOW;
            } else if (kind && strcmp(kind, "errno") == 0) {
                char *n = strtok_r(NULL, " \t\n", &save);
                if (!n)
                    return fail(line, "default errno without a number");
                act = SCMP_ACT_ERRNO((uint32_t)atoi(n));
            } else {
                return fail(line, "unknown default action");
            }
            ctx = p_init(act); /* sets no_new_privs on load, like runc */
            if (!ctx)
                return fail(line, "seccomp_init failed");
            continue;
        }
        if (!ctx)
            return fail(line, "rule before the default line");
        uint32_t act;
        if (strcmp(word, "allow") == 0) {
            act = SCMP_ACT_ALLOW;
        } else if (strcmp(word, "errno") == 0) {
            char *n = strtok_r(NULL, " \t\n", &save);
            if (!n)
                return fail(line, "errno without a number");
            act = SCMP_ACT_ERRNO((uint32_t)atoi(n));
        } else {
            return fail(line, "unknown action");
        }
        char *name = strtok_r(NULL, " \t\n", &save);
        if (!name)
            return fail(line, "rule without a syscall name");
        struct scmp_arg_cmp conds[MAX_CONDS];
        unsigned int n = 0;
        char *c;
        while ((c = strtok_r(NULL, " \t\n", &save))) {
            char op[16];
            unsigned int idx;
            unsigned long long a, b;
            if (n == MAX_CONDS || sscanf(c, "%u:%15[A-Z_]:%llu:%llu", &idx, op, &a, &b) != 4)
                return fail(line, "bad condition");
            int code = op_code(op);
            if (code < 0 || idx > 5)
                return fail(line, "bad condition operator or index");
            conds[n].arg = idx;
            conds[n].op = code;
            conds[n].datum_a = a;
            conds[n].datum_b = b;
            n++;
        }
        int nr = p_resolve(name);
        if (nr < 0) { /* __NR_SCMP_ERROR: not a system call on this architecture */
            skipped++;
            continue;
        }
        int r = p_rule_add_array(ctx, act, nr, n, conds);
        if (r < 0) {
            fprintf(stderr, "dp_seccomp: rules line %d: seccomp_rule_add(%s): %s\n", line, name,
                    strerror(-r));
            return 125;
        }
        rules++;
    }
    fclose(f);
    if (!ctx)
        return fail(line, "no default line");
    int r = p_load(ctx);
    if (r < 0) {
        fprintf(stderr, "dp_seccomp: seccomp_load: %s\n", strerror(-r));
        return 125;
    }
    if (getenv("DP_SECCOMP_VERBOSE"))
        fprintf(stderr, "dp_seccomp: %d rules loaded, %d names unknown here\n", rules, skipped);
    execvp(argv[2], argv + 2);
    fprintf(stderr, "dp_seccomp: cannot execute %s: %s\n", argv[2], strerror(errno));
    return 127;
}
