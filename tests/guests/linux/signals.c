/* Signals: sigaction with SA_SIGINFO, raise, kill and sigqueue to self,
 * sigprocmask and sigpending, the handler's mask, SIG_IGN, sigaltstack,
 * SIGALRM from setitimer, alarm, SIGCHLD, sigtimedwait, sigsuspend, nested
 * signals, tgkill; a handler installed with signal() (no SA_SIGINFO: on arm the
 * non-rt frame and glibc's sigreturn restorer); SIGPIPE on EPIPE from write/send
 * (handled, MSG_NOSIGNAL, default action in a child).
 * "signals sigpipe" only writes to a pipe without a reader, SIGPIPE at SIG_DFL: the
 * process dies of it.
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include "guest.h"

static volatile sig_atomic_t count[65];
static volatile int last_code, last_value, last_pid_ok, usr1_blocked_inside, on_altstack, nested;
static volatile int chld_code, chld_status;
static char *alt_base;
static size_t alt_size;

static void handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    count[sig]++;
    last_code = si->si_code;
    last_value = si->si_value.sival_int;
    last_pid_ok = si->si_pid == getpid();
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    usr1_blocked_inside = sigismember(&cur, SIGUSR1);
}

static void alt_handler(int sig, siginfo_t *si, void *uc)
{
    (void)si;
    (void)uc;
    char local;
    count[sig]++;
    on_altstack = &local >= alt_base && &local < alt_base + alt_size;
}

static void nest_handler(int sig)
{
    count[sig]++;
    if (sig == SIGUSR1) {
        raise(SIGUSR2);
        nested = count[SIGUSR2];
    }
}

static const char *code_name(int code);
static volatile int plain_ran;

static void plain_handler(int sig)
{
    /* clobbers integer and VFP registers: the interrupted code must get its own back */
    volatile double x = sig * 3.25;
    volatile long y = sig * 7;
    say("plain handler: sig=%d x=%.2f y=%ld", sig, x * 2, y + 1);
    plain_ran++;
}

static volatile int pipe_count, pipe_code, pipe_pid_ok;

static void pipe_handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    (void)sig;
    pipe_count++;
    pipe_code = si->si_code;
    pipe_pid_ok = si->si_pid == getpid();
}

static void sigpipe_tests(void)
{
    struct sigaction pa = {0};
    pa.sa_sigaction = pipe_handler;
    pa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGPIPE, &pa, NULL) == 0, "sigaction SIGPIPE");
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    close(p[0]);
    CHECK_ERR(write(p[1], "x", 1), EPIPE, "write to a pipe without a reader: EPIPE");
    say("SIGPIPE from write: count=%d code=%s pid-ok=%d", pipe_count, code_name(pipe_code),
        pipe_pid_ok);
    close(p[1]);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    close(sv[1]);
    CHECK_ERR(send(sv[0], "x", 1, MSG_NOSIGNAL), EPIPE, "send MSG_NOSIGNAL to a closed peer: EPIPE");
    say("after send with MSG_NOSIGNAL: count=%d", pipe_count);
    CHECK_ERR(send(sv[0], "x", 1, 0), EPIPE, "send to a closed peer: EPIPE");
    say("after send: count=%d", pipe_count);
    CHECK_ERR(write(sv[0], "x", 1), EPIPE, "write to a closed peer: EPIPE");
    say("after write to the socket: count=%d", pipe_count);
    close(sv[0]);
    /* blocked at SIG_DFL: EPIPE, and SIGPIPE stays pending (the process lives) */
    sigset_t pset, pend;
    sigemptyset(&pset);
    sigaddset(&pset, SIGPIPE);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_BLOCK, &pset, NULL);
    CHECK(pipe(p) == 0, "pipe");
    close(p[0]);
    CHECK_ERR(write(p[1], "x", 1), EPIPE, "write with SIGPIPE blocked: EPIPE");
    CHECK(sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE), "SIGPIPE pending while blocked");
    close(p[1]);
    signal(SIGPIPE, SIG_IGN);       /* discards the pending one */
    sigprocmask(SIG_UNBLOCK, &pset, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        int q[2];
        if (pipe(q) == 0) {
            close(q[0]);
            write(q[1], "x", 1);
        }
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "reap the SIGPIPE child");
    say("child writing to a broken pipe: signaled=%d sig=%d", WIFSIGNALED(status), WTERMSIG(status));
}

static void chld_handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    count[sig]++;
    chld_code = si->si_code;
    chld_status = si->si_status;
}

static const char *code_name(int code)
{
    switch (code) {
    case SI_USER: return "SI_USER";
    case SI_QUEUE: return "SI_QUEUE";
    case SI_TKILL: return "SI_TKILL";
    case SI_TIMER: return "SI_TIMER";
    case SI_KERNEL: return "SI_KERNEL";
    default: return "other";
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "sigpipe") == 0) {
        int p[2];
        CHECK(pipe(p) == 0, "pipe");
        close(p[0]);
        write(p[1], "x", 1);
        say("still alive after the write");
        return 3;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction SIGUSR1");
    struct sigaction got;
    CHECK(sigaction(SIGUSR1, NULL, &got) == 0 && got.sa_sigaction == handler && (got.sa_flags & SA_SIGINFO),
          "sigaction reads back the handler");

    CHECK(raise(SIGUSR1) == 0, "raise SIGUSR1");
    say("after raise: count=%d code=%s blocked-inside=%d", count[SIGUSR1], code_name(last_code), usr1_blocked_inside);
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill self SIGUSR1");
    say("after kill: count=%d code=%s pid-ok=%d", count[SIGUSR1], code_name(last_code), last_pid_ok);
    union sigval v = {.sival_int = 42};
    CHECK(sigqueue(getpid(), SIGUSR1, v) == 0, "sigqueue SIGUSR1 42");
    say("after sigqueue: count=%d code=%s value=%d", count[SIGUSR1], code_name(last_code), last_value);
    CHECK(syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR1) == 0, "tgkill self");
    say("after tgkill: count=%d code=%s", count[SIGUSR1], code_name(last_code));

    sigset_t set, old, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, &old) == 0, "block SIGUSR1");
    raise(SIGUSR1);
    CHECK(sigpending(&pend) == 0 && sigismember(&pend, SIGUSR1), "SIGUSR1 is pending");
    say("while blocked: count=%d", count[SIGUSR1]);
    CHECK(sigprocmask(SIG_SETMASK, &old, NULL) == 0, "unblock");
    say("after unblock: count=%d", count[SIGUSR1]);
    CHECK(sigpending(&pend) == 0 && !sigismember(&pend, SIGUSR1), "nothing pending any more");

    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    siginfo_t si;
    struct timespec zero = {0, 0};
    CHECK(sigtimedwait(&set, &si, &zero) == SIGUSR1 && si.si_signo == SIGUSR1, "sigtimedwait takes the pending SIGUSR1");
    CHECK_ERR(sigtimedwait(&set, &si, &zero), EAGAIN, "sigtimedwait with nothing pending: EAGAIN");
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    say("handler not run for the waited signal: count=%d", count[SIGUSR1]);

    CHECK(signal(SIGUSR2, SIG_IGN) != SIG_ERR, "SIG_IGN for SIGUSR2");
    CHECK(raise(SIGUSR2) == 0, "an ignored signal does nothing");
    CHECK_ERR(sigaction(SIGKILL, &sa, NULL), EINVAL, "sigaction SIGKILL: EINVAL");
    CHECK_ERR(kill(getpid(), 99), EINVAL, "kill with signal 99: EINVAL");

    /* nested: SIGUSR1's handler raises SIGUSR2 */
    signal(SIGUSR1, nest_handler);
    signal(SIGUSR2, nest_handler);
    int before = count[SIGUSR1];
    raise(SIGUSR1);
    say("nested: usr1=%d usr2-inside=%d", count[SIGUSR1] - before, nested);

    /* signal(): glibc installs it without SA_SIGINFO */
    CHECK(signal(SIGUSR2, plain_handler) != SIG_ERR, "signal(SIGUSR2, handler)");
    volatile double f = 1.5;
    volatile long k = 41;
    CHECK(raise(SIGUSR2) == 0, "raise SIGUSR2");
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    say("after the signal() handler: ran=%d k=%ld f=%.1f usr2-blocked=%d", plain_ran, k + 1,
        f * 2, sigismember(&now, SIGUSR2));

    /* sigaltstack */
    alt_size = 64 * 1024;
    alt_base = malloc(alt_size);
    stack_t ss = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0}, oss;
    CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
    CHECK(sigaltstack(NULL, &oss) == 0 && oss.ss_sp == alt_base && oss.ss_size == alt_size && oss.ss_flags == 0,
          "sigaltstack reads back");
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = alt_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGWINCH, &sa, NULL);
    raise(SIGWINCH);
    say("SA_ONSTACK handler ran: %d on the alternate stack: %d", count[SIGWINCH], on_altstack);
    ss.ss_flags = SS_DISABLE;
    CHECK(sigaltstack(&ss, NULL) == 0, "disable the alternate stack");
    raise(SIGWINCH);
    say("without the alternate stack: on it=%d", on_altstack);

    /* SIGALRM */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {0, 30000}};
    sigset_t none, alrm;
    sigemptyset(&none);
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer ITIMER_REAL 30 ms");
    while (count[SIGALRM] == 0)
        sigsuspend(&none);
    say("SIGALRM from setitimer: count=%d code=%s", count[SIGALRM], code_name(last_code));
    struct itimerval cur;
    CHECK(getitimer(ITIMER_REAL, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_usec == 0,
          "getitimer: disarmed after firing");
    it.it_interval.tv_usec = 10000;
    it.it_value.tv_usec = 10000;
    setitimer(ITIMER_REAL, &it, NULL);
    while (count[SIGALRM] < 4)
        sigsuspend(&none);
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, NULL);
    say("periodic SIGALRM reached 4: %d", count[SIGALRM] >= 4);
    CHECK(alarm(5) == 0, "alarm 5 with none pending returns 0");
    say("alarm(0) returns the remaining seconds: %u", alarm(0));
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);

    /* SIGCHLD */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = chld_handler;
    sa.sa_flags = SA_SIGINFO | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(6);
    while (count[SIGCHLD] == 0)
        sigsuspend(&none);
    sigprocmask(SIG_UNBLOCK, &chld, NULL);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "reap the child");
    say("SIGCHLD: count=%d code=%s status=%d", count[SIGCHLD], chld_code == CLD_EXITED ? "CLD_EXITED" : "other",
        chld_status);

    /* default action of SIGTERM in a child, as the parent sees it */
    pid = fork();
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(0);
    }
    waitpid(pid, &status, 0);
    say("child raising SIGTERM: signaled=%d sig=%d", WIFSIGNALED(status), WTERMSIG(status));
    sigpipe_tests();
    return guest_done();
}
