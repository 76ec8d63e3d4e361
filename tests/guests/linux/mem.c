/* Memory: malloc churn, big malloc, mmap anonymous and file-backed (private
 * and shared), MAP_FIXED, mprotect, mremap, brk/sbrk, madvise, a shared
 * anonymous mapping seen across fork.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "guest.h"

static uint32_t rng = 12345;
static uint32_t next(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

int main(void)
{
    long page = sysconf(_SC_PAGESIZE);
    say("page size: %ld", page);

    /* malloc churn: allocate, fill, free half, realloc, checksum */
    enum { N = 4000 };
    static unsigned char *blocks[N];
    static size_t sizes[N];
    uint32_t sum = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            if (blocks[i] && (next() & 1)) {
                for (size_t j = 0; j < sizes[i]; j += 7)
                    sum = sum * 31 + blocks[i][j];
                free(blocks[i]);
                blocks[i] = NULL;
            }
            if (!blocks[i]) {
                sizes[i] = 1 + next() % 3000;
                blocks[i] = malloc(sizes[i]);
                memset(blocks[i], (int)(i + round), sizes[i]);
            } else if (next() % 4 == 0) {
                size_t ns = 1 + next() % 6000;
                unsigned char *p = realloc(blocks[i], ns);
                if (ns > sizes[i])
                    memset(p + sizes[i], 0x5a, ns - sizes[i]);
                blocks[i] = p;
                sizes[i] = ns;
            }
        }
    }
    for (int i = 0; i < N; i++) {
        for (size_t j = 0; j < sizes[i]; j += 7)
            sum = sum * 31 + blocks[i][j];
        free(blocks[i]);
    }
    say("malloc churn checksum: %08x", sum);

    size_t big = 64u << 20;
    unsigned char *b = malloc(big);
    CHECK(b != NULL, "malloc 64 MiB");
    for (size_t i = 0; i < big; i += 4096)
        b[i] = (unsigned char)(i >> 12);
    uint32_t bs = 0;
    for (size_t i = 0; i < big; i += 4096)
        bs += b[i];
    say("64 MiB touch sum: %u", bs);
    free(b);

    unsigned char *a = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED, "mmap anonymous 4 pages");
    CHECK(((uintptr_t)a & (page - 1)) == 0, "mmap result is page aligned");
    CHECK(a[0] == 0 && a[4 * page - 1] == 0, "anonymous memory is zeroed");
    memset(a, 0xab, 4 * page);
    unsigned char *f = mmap(a + page, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(f == a + page, "MAP_FIXED replaces a page in place");
    CHECK(a[page] == 0 && a[0] == 0xab && a[2 * page] == 0xab, "only the fixed page was replaced");
    CHECK(mprotect(a, page, PROT_READ) == 0, "mprotect PROT_READ");
    CHECK(a[0] == 0xab, "still readable after mprotect");
    CHECK(mprotect(a, page, PROT_READ | PROT_WRITE) == 0 && (a[0] = 1) == 1, "writable again");
    CHECK_ERR(mprotect(a + 1, page, PROT_READ), EINVAL, "mprotect unaligned: EINVAL");

    unsigned char *r = mremap(a, 4 * page, 64 * page, MREMAP_MAYMOVE);
    CHECK(r != MAP_FAILED, "mremap grow with MREMAP_MAYMOVE");
    CHECK(r[0] == 1 && r[page] == 0 && r[3 * page] == 0xab && r[63 * page] == 0, "mremap keeps the contents");
    r[63 * page] = 7;
    unsigned char *s = mremap(r, 64 * page, 2 * page, 0);
    CHECK(s == r, "mremap shrink stays in place");
    CHECK(munmap(s, 2 * page) == 0, "munmap");

    /* madvise */
    unsigned char *m = mmap(NULL, 8 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 0x77, 8 * page);
    CHECK(madvise(m, 8 * page, MADV_WILLNEED) == 0, "madvise MADV_WILLNEED");
    CHECK(madvise(m + 2 * page, 2 * page, MADV_DONTNEED) == 0, "madvise MADV_DONTNEED");
    CHECK(m[2 * page] == 0 && m[4 * page - 1] == 0 && m[page] == 0x77 && m[4 * page] == 0x77,
          "MADV_DONTNEED zeroes exactly its range");
    munmap(m, 8 * page);

    /* file mappings */
    char path[] = "/tmp/pyqemu-mem.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    unlink(path);
    char data[8192];
    for (int i = 0; i < 8192; i++)
        data[i] = (char)('a' + i % 26);
    CHECK(write(fd, data, 8192) == 8192, "write 8 KiB");
    char *fp = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(fp != MAP_FAILED, "mmap file MAP_PRIVATE");
    CHECK(fp[0] == 'a' && fp[8191] == data[8191], "file contents visible");
    fp[0] = 'Z';
    char c = 0;
    CHECK(pread(fd, &c, 1, 0) == 1 && c == 'a', "private write does not reach the file");
    munmap(fp, 8192);
    char *fs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 4096);
    CHECK(fs != MAP_FAILED, "mmap file MAP_SHARED at offset 4096");
    CHECK(fs[0] == data[4096], "offset mapping shows the right bytes");
    fs[1] = '!';
    CHECK(msync(fs, 4096, MS_SYNC) == 0, "msync");
    CHECK(pread(fd, &c, 1, 4097) == 1 && c == '!', "shared write reaches the file");
    CHECK(pwrite(fd, "?", 1, 4098) == 1 && fs[2] == '?', "file write shows in the shared mapping");
    munmap(fs, 4096);
    CHECK_ERR(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 100) == MAP_FAILED ? -1 : 0, EINVAL,
              "mmap at an unaligned offset: EINVAL");
    close(fd);
    CHECK_ERR(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 9999, 0) == MAP_FAILED ? -1 : 0, EBADF,
              "mmap of a bad fd: EBADF");

    /* shared anonymous across fork */
    volatile int *sh = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile int *pv = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *sh = 1;
    *pv = 1;
    pid_t pid = fork();
    if (pid == 0) {
        *sh = 42;
        *pv = 42;
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(*sh == 42, "child's write to MAP_SHARED is seen by the parent");
    CHECK(*pv == 1, "child's write to MAP_PRIVATE is not");

    /* brk */
    void *b0 = sbrk(0);
    CHECK(b0 != (void *)-1, "sbrk(0)");
    char *nb = sbrk(16 * page);
    CHECK(nb == b0, "sbrk grows from the old break");
    memset(nb, 0x11, 16 * page);
    CHECK(sbrk(0) == (char *)b0 + 16 * page, "break moved by 16 pages");
    CHECK(sbrk(-8 * page) != (void *)-1 && sbrk(0) == (char *)b0 + 8 * page, "sbrk shrinks");
    CHECK(nb[8 * page - 1] == 0x11, "memory below the break is kept");
    CHECK(brk(b0) == 0 && sbrk(0) == b0, "brk back to the start");
    return guest_done();
}
