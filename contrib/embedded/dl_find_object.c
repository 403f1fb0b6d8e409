/*
 * _dl_find_object for static musl links against GCC's unwinder.
 *
 * Rust's musl targets link a static libunwind. Debian has none built for
 * musl, so contrib/embedded/build.sh uses GCC's libgcc_eh.a instead. GCC 12
 * was built against glibc 2.36 and looks up unwind tables with glibc's
 * _dl_find_object (glibc 2.35+), which musl does not have. This provides it
 * on top of dl_iterate_phdr, which musl has, with glibc's struct layout for
 * the targets build.sh supports (64-bit generic and 32-bit ARM EHABI).
 * It only matters for backtraces: echod's release builds abort on panic.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__i386__)
#error "i386 needs dlfo_eh_dbase; not supported by this shim"
#endif

struct dl_find_object {
    unsigned long long dlfo_flags;
    void *dlfo_map_start;
    void *dlfo_map_end;
    void *dlfo_link_map;
    void *dlfo_eh_frame;
#if defined(__arm__)
    int dlfo_eh_count;
    unsigned int dlfo_eh_count_pad;
#endif
    unsigned long long dlfo_reserved[7];
};

#if defined(__arm__)
#define EH_SEGMENT PT_ARM_EXIDX
#else
#define EH_SEGMENT PT_GNU_EH_FRAME
#endif

struct lookup {
    uintptr_t pc;
    struct dl_find_object *out;
    int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *arg) {
    struct lookup *l = arg;
    const ElfW(Phdr) *eh = NULL;
    int inside = 0;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    (void)size;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD) {
            uintptr_t start = info->dlpi_addr + ph->p_vaddr;
            uintptr_t end = start + ph->p_memsz;
            if (start < lo) lo = start;
            if (end > hi) hi = end;
            if (l->pc >= start && l->pc < end) inside = 1;
        } else if (ph->p_type == EH_SEGMENT) {
            eh = ph;
        }
    }
    if (!inside || eh == NULL) return 0;
    l->out->dlfo_flags = 0;
    l->out->dlfo_map_start = (void *)lo;
    l->out->dlfo_map_end = (void *)hi;
    l->out->dlfo_link_map = NULL;
    l->out->dlfo_eh_frame = (void *)(info->dlpi_addr + eh->p_vaddr);
#if defined(__arm__)
    l->out->dlfo_eh_count = (int)(eh->p_memsz / 8);
#endif
    l->found = 1;
    return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *result) {
    struct lookup l = {(uintptr_t)pc, result, 0};
    dl_iterate_phdr(visit, &l);
    return l.found ? 0 : -1;
}
