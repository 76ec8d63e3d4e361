/* Signals sent from outside (the test sends each once a "ready for" line says so):
 * SIGUSR1 to a guest waiting in sigsuspend, SIGINT taken by sigwaitinfo, SIGTERM to a
 * process of two threads both in nanosleep loops (SA_RESTART handler), and finally
 * SIGINT with its default action, which kills the guest waiting in pause().
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static volatile sig_atomic_t count[65];
static volatile int last_code, from_parent;
static volatile int release_thread;

static void handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    count[sig]++;
    last_code = si->si_code;
    from_parent = si->si_pid == getppid();
}

static void *sleeper(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&release_thread, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return (void *)42;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction SIGUSR1");
    CHECK(sigaction(SIGTERM, &sa, NULL) == 0, "sigaction SIGTERM");

    sigset_t usr1, none, intset;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    say("ready for SIGUSR1");
    while (count[SIGUSR1] == 0)
        sigsuspend(&none);
    sigprocmask(SIG_UNBLOCK, &usr1, NULL);
    say("SIGUSR1: count=%d SI_USER=%d from-parent=%d", count[SIGUSR1], last_code == SI_USER, from_parent);

    sigemptyset(&intset);
    sigaddset(&intset, SIGINT);
    sigprocmask(SIG_BLOCK, &intset, NULL);
    say("ready for SIGINT");
    siginfo_t si;
    int got = sigwaitinfo(&intset, &si);
    say("sigwaitinfo: %s SI_USER=%d handler-count=%d", got == SIGINT ? "SIGINT" : "other", si.si_code == SI_USER,
        count[SIGINT]);
    sigprocmask(SIG_UNBLOCK, &intset, NULL);

    pthread_t th;
    CHECK(pthread_create(&th, NULL, sleeper, NULL) == 0, "pthread_create");
    say("ready for SIGTERM");
    while (count[SIGTERM] == 0) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    __atomic_store_n(&release_thread, 1, __ATOMIC_SEQ_CST);
    void *ret;
    CHECK(pthread_join(th, &ret) == 0 && ret == (void *)42, "pthread_join after SIGTERM's handler");
    say("SIGTERM: count=%d", count[SIGTERM]);
    say("ready for the last SIGINT");
    for (;;)
        pause();
}
