/* A zlib-ABI library that misbehaves, for the accel=zlib: tests (tests/mount_accel.rs).
 *
 * It forwards every call to the real zlib (REAL_LIBZ, default "libz.so.1", loaded with dlopen)
 * and flips one byte in the middle of every CORRUPT_EVERY-th finished deflate stream (default
 * 100), still reporting success: a compressor with a silent-corruption bug. Inflate is left
 * alone. Build:
 *
 *   cc -shared -fPIC -O2 -DCORRUPT_EVERY=100 -o libzcorrupt.so tests/shim/corrupt_zlib.c -ldl
 *
 * Only the leading fields of z_stream are used; the layout is zlib.h's (no header needed). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef CORRUPT_EVERY
#define CORRUPT_EVERY 100
#endif
#ifndef REAL_LIBZ
#define REAL_LIBZ "libz.so.1"
#endif

typedef struct {
    const unsigned char *next_in;
    unsigned avail_in;
    unsigned long total_in;
    unsigned char *next_out;
    unsigned avail_out;
    unsigned long total_out;
} z_head;

static void *real_sym(const char *name) {
    static void *handle;
    void *h = __atomic_load_n(&handle, __ATOMIC_ACQUIRE);
    if (!h) {
        h = dlopen(REAL_LIBZ, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "corrupt_zlib: cannot load %s: %s\n", REAL_LIBZ, dlerror());
            abort();
        }
        __atomic_store_n(&handle, h, __ATOMIC_RELEASE);
    }
    void *f = dlsym(h, name);
    if (!f) {
        fprintf(stderr, "corrupt_zlib: %s has no %s\n", REAL_LIBZ, name);
        abort();
    }
    return f;
}

static unsigned long streams_finished;

const char *zlibVersion(void) {
    return ((const char *(*)(void))real_sym("zlibVersion"))();
}

int deflateInit2_(void *s, int level, int method, int bits, int mem, int strategy,
                  const char *version, int size) {
    return ((int (*)(void *, int, int, int, int, int, const char *, int))real_sym(
        "deflateInit2_"))(s, level, method, bits, mem, strategy, version, size);
}

int deflate(z_head *s, int flush) {
    unsigned char *start = s->next_out;
    int r = ((int (*)(z_head *, int))real_sym("deflate"))(s, flush);
    if (r == 1 /* Z_STREAM_END */) {
        unsigned long n = __atomic_add_fetch(&streams_finished, 1, __ATOMIC_RELAXED);
        if (n % CORRUPT_EVERY == 0 && s->next_out > start)
            start[(s->next_out - start) / 2] ^= 0x10;
    }
    return r;
}

int deflateEnd(void *s) { return ((int (*)(void *))real_sym("deflateEnd"))(s); }
int deflateReset(void *s) { return ((int (*)(void *))real_sym("deflateReset"))(s); }

int inflateInit2_(void *s, int bits, const char *version, int size) {
    return ((int (*)(void *, int, const char *, int))real_sym("inflateInit2_"))(s, bits, version,
                                                                                size);
}

int inflate(void *s, int flush) { return ((int (*)(void *, int))real_sym("inflate"))(s, flush); }
int inflateEnd(void *s) { return ((int (*)(void *))real_sym("inflateEnd"))(s); }
int inflateReset(void *s) { return ((int (*)(void *))real_sym("inflateReset"))(s); }
