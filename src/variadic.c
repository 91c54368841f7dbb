/*
 * execl, execle, execlp: variadic, so they cannot be defined in stable Rust. glibc's
 * own versions call execve internally (not through the PLT), which would bypass the
 * shim; these collect the argument list and call the shim's execve/execvp exports.
 */
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>

#define RINGSHIM_MAX_ARGS 4096

__attribute__((visibility("default"))) int execl(const char *path, const char *arg, ...)
{
	const char *argv[RINGSHIM_MAX_ARGS];
	size_t n = 0;
	va_list ap;
	argv[n++] = arg;
	va_start(ap, arg);
	while (argv[n - 1] != NULL) {
		if (n == RINGSHIM_MAX_ARGS) { va_end(ap); errno = E2BIG; return -1; }
		argv[n++] = va_arg(ap, const char *);
	}
	va_end(ap);
	return execv(path, (char *const *)argv);
}

__attribute__((visibility("default"))) int execlp(const char *file, const char *arg, ...)
{
	const char *argv[RINGSHIM_MAX_ARGS];
	size_t n = 0;
	va_list ap;
	argv[n++] = arg;
	va_start(ap, arg);
	while (argv[n - 1] != NULL) {
		if (n == RINGSHIM_MAX_ARGS) { va_end(ap); errno = E2BIG; return -1; }
		argv[n++] = va_arg(ap, const char *);
	}
	va_end(ap);
	return execvp(file, (char *const *)argv);
}

__attribute__((visibility("default"))) int execle(const char *path, const char *arg, ...)
{
	const char *argv[RINGSHIM_MAX_ARGS];
	char *const *envp;
	size_t n = 0;
	va_list ap;
	argv[n++] = arg;
	va_start(ap, arg);
	while (argv[n - 1] != NULL) {
		if (n == RINGSHIM_MAX_ARGS) { va_end(ap); errno = E2BIG; return -1; }
		argv[n++] = va_arg(ap, const char *);
	}
	envp = va_arg(ap, char *const *);
	va_end(ap);
	return execve(path, (char *const *)argv, envp);
}
