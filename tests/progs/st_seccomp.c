/* st_seccomp EPERM|ENOSYS PROGRAM [ARGS...]
 *
 * Installs a seccomp filter that makes io_uring_setup(2) fail with the given errno (as
 * container runtimes do: Docker's default profile answers EPERM, older ones ENOSYS) and
 * execs PROGRAM. If ST_PRELOAD is set, it becomes PROGRAM's LD_PRELOAD: the launcher
 * itself never runs under the shim, so the shim's only io_uring probe is the one made
 * behind the filter.
 *
 * The filter is classic BPF: check the audit architecture first (a syscall number only
 * means something for one ABI, and x32 numbers on x86_64 carry __X32_SYSCALL_BIT), then
 * compare the number with __NR_io_uring_setup (425 on x86_64 and on the generic table
 * that aarch64 uses). Everything else is allowed. Before exec'ing, the launcher checks
 * that the filter really answers the way the test expects.
 *
 * Exit status: that of PROGRAM; 1 (with a "FAIL" line) if the filter cannot be set up or
 * does not take effect; 77 on an architecture this file does not know or a kernel
 * without seccomp filters.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define ST_AUDIT_ARCH 0
#endif

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s EPERM|ENOSYS PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    int err;
    if (strcmp(argv[1], "EPERM") == 0)
        err = EPERM;
    else if (strcmp(argv[1], "ENOSYS") == 0)
        err = ENOSYS;
    else {
        fprintf(stderr, "%s: errno must be EPERM or ENOSYS\n", argv[0]);
        return 2;
    }
    if (ST_AUDIT_ARCH == 0) {
        printf("SKIP: no seccomp filter for this architecture\n");
        return 77;
    }

    struct sock_filter filter[] = {
        /* Another ABI's numbers mean other calls: leave them alone. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ST_AUDIT_ARCH, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };
    /* Without root, a filter may only be installed by a process that can never gain
     * privileges again (and the exec'd program inherits both). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "FAIL st_seccomp: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
        return 1;
    }
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
        /* A kernel built without seccomp filters: not a failure of the test subject. */
        if (errno == ENOSYS || errno == EINVAL) {
            printf("SKIP: seccomp filters unavailable (%s)\n", strerror(errno));
            return 77;
        }
        fprintf(stderr, "FAIL st_seccomp: SECCOMP_SET_MODE_FILTER: %s\n", strerror(errno));
        return 1;
    }

    /* The filter must answer exactly as intended, or the test proves nothing. The
     * parameters are all-zero and entries 1: a call the kernel would accept. */
    unsigned char params[120] = {0};
    errno = 0;
    long r = syscall(__NR_io_uring_setup, 1, params);
    if (r != -1 || errno != err) {
        fprintf(stderr, "FAIL st_seccomp: io_uring_setup returned %ld (errno %d), expected -1/%s\n",
                r, errno, argv[1]);
        return 1;
    }

    const char *preload = getenv("ST_PRELOAD");
    if (preload && setenv("LD_PRELOAD", preload, 1) != 0) {
        fprintf(stderr, "FAIL st_seccomp: setenv: %s\n", strerror(errno));
        return 1;
    }
    execvp(argv[2], argv + 2);
    fprintf(stderr, "FAIL st_seccomp: exec %s: %s\n", argv[2], strerror(errno));
    return 127;
}
