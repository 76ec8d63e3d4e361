/* Threads: 8 pthreads; a mutex-protected counter and an atomic counter, both
 * contended, and one incremented by compare-and-swap (the kuser cmpxchg helper
 * on ARM); a condition-variable start gate; thread-local storage; distinct
 * tids; join values; a barrier; pthread_once; a detached thread.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

enum { NTHREADS = 8, ITERS = 20000 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cv = PTHREAD_COND_INITIALIZER, go_cv = PTHREAD_COND_INITIALIZER;
static int ready, go;
static long counter;
static long atomic_counter;
static int cas_counter;
static __thread int tls_id = -1;
static __thread long tls_sum;
static pid_t tids[NTHREADS];
static pthread_barrier_t barrier;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int once_runs;
static int serial_count;

static void once_fn(void)
{
    once_runs++;
}

/* One increment by compare-and-swap: through the kernel's __kuser_cmpxchg helper at
 * 0xffff0fc0 on 32-bit ARM (returns 0 when the store happened), a CAS loop on AArch64. */
static void cas_increment(void)
{
#ifdef __arm__
    typedef int (kuser_cmpxchg_t)(int oldval, int newval, volatile int *ptr);
    kuser_cmpxchg_t *cmpxchg = (kuser_cmpxchg_t *)0xffff0fc0;
    int old;
    do
        old = *(volatile int *)&cas_counter;
    while (cmpxchg(old, old + 1, &cas_counter) != 0);
#else
    int old = __atomic_load_n(&cas_counter, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&cas_counter, &old, old + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
#endif
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    tls_id = id;
    tids[id] = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_signal(&ready_cv);
    while (!go)
        pthread_cond_wait(&go_cv, &lock);
    pthread_mutex_unlock(&lock);

    for (int i = 0; i < ITERS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
        __atomic_fetch_add(&atomic_counter, 1, __ATOMIC_SEQ_CST);
        cas_increment();
        tls_sum += id;
        if ((i & 1023) == 0)
            sched_yield();
    }
    pthread_once(&once, once_fn);
    int r = pthread_barrier_wait(&barrier);
    if (r == PTHREAD_BARRIER_SERIAL_THREAD)
        __atomic_fetch_add(&serial_count, 1, __ATOMIC_SEQ_CST);
    int ok = tls_id == id && tls_sum == (long)id * ITERS;
    return (void *)(intptr_t)(ok ? 100 + id : -1);
}

static volatile int detached_ran;
static void *detached(void *arg)
{
    (void)arg;
    __atomic_store_n(&detached_ran, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(void)
{
    pthread_t th[NTHREADS];
    tls_id = 99;
    CHECK(pthread_barrier_init(&barrier, NULL, NTHREADS) == 0, "pthread_barrier_init");
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create %d", i);
    pthread_mutex_lock(&lock);
    while (ready < NTHREADS)
        pthread_cond_wait(&ready_cv, &lock);
    go = 1;
    pthread_cond_broadcast(&go_cv);
    pthread_mutex_unlock(&lock);
    say("all %d threads reached the start gate", ready);

    long joined = 0;
    for (int i = 0; i < NTHREADS; i++) {
        void *ret;
        CHECK(pthread_join(th[i], &ret) == 0, "pthread_join %d", i);
        joined += (intptr_t)ret;
    }
    say("join values sum: %ld", joined);
    say("mutex counter: %ld", counter);
    say("atomic counter: %ld", atomic_counter);
    say("cmpxchg counter: %d", cas_counter);
    say("main thread's TLS untouched: %d", tls_id);
    say("pthread_once ran %d time(s); barrier serial threads: %d", once_runs, serial_count);
    int distinct = 1;
    pid_t me = getpid();
    for (int i = 0; i < NTHREADS; i++) {
        if (tids[i] == me || tids[i] <= 0)
            distinct = 0;
        for (int j = 0; j < i; j++)
            if (tids[i] == tids[j])
                distinct = 0;
    }
    say("thread ids distinct and not the pid: %d", distinct);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t d;
    CHECK(pthread_create(&d, &attr, detached, NULL) == 0, "detached thread");
    while (!__atomic_load_n(&detached_ran, __ATOMIC_SEQ_CST))
        sched_yield();
    say("detached thread ran: %d", detached_ran);
    return guest_done();
}
