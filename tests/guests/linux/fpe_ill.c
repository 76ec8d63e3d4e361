/* SIGILL from an undefined instruction, SIGBUS from an unaligned exclusive
 * load, integer division by zero (SIGFPE from libgcc on ARMv7, none on
 * AArch64), SIGFPE and SIGTRAP raised by hand; each caught and recovered with siglongjmp.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include "guest.h"

static sigjmp_buf env;
static volatile int got_sig, got_code;

static void on_sig(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    got_sig = sig;
    got_code = si->si_code;
    siglongjmp(env, 1);
}

static const char *code_name(int sig, int code)
{
    if (sig == SIGILL)
        return code == ILL_ILLOPC ? "ILL_ILLOPC" : code == ILL_ILLOPN ? "ILL_ILLOPN" : code == ILL_ILLTRP ? "ILL_ILLTRP" : "other";
    if (sig == SIGBUS)
        return code == BUS_ADRERR ? "BUS_ADRERR" : code == BUS_ADRALN ? "BUS_ADRALN" : "other";
    if (code == SI_TKILL)
        return "SI_TKILL";
    return "other";
}

static volatile int divisor;

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sig;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGILL, SIGBUS, SIGFPE, SIGTRAP};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        CHECK(sigaction(sigs[i], &sa, NULL) == 0, "sigaction %s", strsignal(sigs[i]));

    got_sig = 0;
    if (sigsetjmp(env, 1) == 0) {
        __asm__ volatile("udf #0");
        say("udf: no signal");
    } else {
        say("udf: signal %s", got_sig == SIGILL ? "SIGILL" : "other");
    }

    /* An exclusive load from an unaligned address: an alignment fault. */
    static char buf[16] __attribute__((aligned(8)));
    got_sig = 0;
    if (sigsetjmp(env, 1) == 0) {
        unsigned v;
#ifdef __aarch64__
        __asm__ volatile("ldxr %w0, [%1]" : "=r"(v) : "r"(buf + 1) : "memory");
#else
        __asm__ volatile("ldrex %0, [%1]" : "=r"(v) : "r"(buf + 1) : "memory");
#endif
        say("unaligned exclusive load: no signal (%u)", v);
    } else {
        say("unaligned exclusive load: %s %s", got_sig == SIGBUS ? "SIGBUS" : "other", code_name(got_sig, got_code));
    }

    /* AArch64's sdiv gives 0; on ARMv7-A, libgcc's __aeabi_idiv0 raises SIGFPE. */
    divisor = 0;
    got_sig = 0;
    if (sigsetjmp(env, 1) == 0) {
        int q = 12345 / divisor;
        say("integer division by zero: no signal, result %d", q);
    } else {
        say("integer division by zero: %s %s", got_sig == SIGFPE ? "SIGFPE" : "other", code_name(got_sig, got_code));
    }

    got_sig = 0;
    if (sigsetjmp(env, 1) == 0) {
        raise(SIGFPE);
        say("raise SIGFPE: returned");
    } else {
        say("raise SIGFPE: caught %s", code_name(got_sig, got_code));
    }
    if (sigsetjmp(env, 1) == 0) {
        raise(SIGTRAP);
        say("raise SIGTRAP: returned");
    } else {
        say("raise SIGTRAP: caught %s", got_sig == SIGTRAP ? "SIGTRAP" : "other");
    }
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    CHECK(!sigismember(&cur, SIGILL) && !sigismember(&cur, SIGFPE), "signal mask restored");
    return guest_done();
}
