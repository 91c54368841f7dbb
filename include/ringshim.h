/*
 * ringshim.h — what libringshim.so exports beyond the libc functions it interposes.
 *
 * A program linked normally calls none of this; tools and tests that want to know
 * whether the shim is loaded, and what it did, resolve these symbols with dlsym
 * (RTLD_DEFAULT) so they still run without the preload.
 */
#ifndef RINGSHIM_H
#define RINGSHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version, e.g. "0.1.0". Never NULL. */
const char *ringshim_version(void);

/* 1 when the shim tracks and routes sockets in this process; 0 when it was loaded with
 * RINGSHIM=0 or a bad configuration and passes every call through. */
int ringshim_active(void);

/* 1 when the configured backend is usable here (io_uring set up), 0 after a fallback. */
int ringshim_backend_available(void);

/* The process-wide total of the counter `name` (the names `ringshim stat` prints, e.g.
 * "sockets_on_uring", "ring_enters", "syscalls_avoided"); UINT64_MAX for an unknown name. */
uint64_t ringshim_counter(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* RINGSHIM_H */
