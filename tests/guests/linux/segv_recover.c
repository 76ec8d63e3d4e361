/* Catch SIGSEGV and recover with siglongjmp: reads of unmapped memory, writes
 * to read-only and PROT_NONE pages, a NULL store; checks si_addr (as an offset
 * into our own mapping) and si_code each time.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "guest.h"

static sigjmp_buf env;
static volatile uintptr_t fault_addr;
static volatile int fault_code, faults;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    faults++;
    fault_addr = (uintptr_t)si->si_addr;
    fault_code = si->si_code;
    siglongjmp(env, 1);
}

static const char *code_name(int c)
{
    return c == SEGV_MAPERR ? "SEGV_MAPERR" : c == SEGV_ACCERR ? "SEGV_ACCERR" : "other";
}

static void try_access(const char *what, volatile char *p, int write, uintptr_t base)
{
    if (sigsetjmp(env, 1) == 0) {
        if (write)
            *p = 1;
        else
            (void)*p;
        say("%s: no fault", what);
    } else {
        say("%s: SIGSEGV %s at base+%ld", what, code_name(fault_code), (long)(fault_addr - base));
    }
}

int main(void)
{
    long page = sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction SIGSEGV");

    char *m = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap 4 pages");
    uintptr_t base = (uintptr_t)m;
    CHECK(mprotect(m + page, page, PROT_READ) == 0, "page 1 read-only");
    CHECK(mprotect(m + 2 * page, page, PROT_NONE) == 0, "page 2 PROT_NONE");
    CHECK(munmap(m + 3 * page, page) == 0, "page 3 unmapped");

    try_access("read page 0", m + 5, 0, base);
    try_access("write read-only page 1", m + page + 8, 1, base);
    try_access("read read-only page 1", m + page + 8, 0, base);
    try_access("read PROT_NONE page 2", m + 2 * page + 16, 0, base);
    try_access("write PROT_NONE page 2", m + 2 * page + 24, 1, base);
    try_access("read unmapped page 3", m + 3 * page + 32, 0, base);
    try_access("write NULL+64", (volatile char *)64, 1, 0);
    CHECK(mprotect(m + page, page, PROT_READ | PROT_WRITE) == 0, "page 1 writable again");
    try_access("write page 1 after mprotect", m + page + 8, 1, base);

    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    CHECK(!sigismember(&cur, SIGSEGV), "siglongjmp restored the signal mask");
    int caught = 0;
    for (int i = 0; i < 100; i++) {
        if (sigsetjmp(env, 1) == 0)
            (void)*(volatile char *)(m + 3 * page + i);
        else
            caught += fault_addr == base + 3 * page + i;
    }
    say("loop of 100 faults, each at its own address: %d", caught);
    say("faults caught: %d", faults);
    return guest_done();
}
