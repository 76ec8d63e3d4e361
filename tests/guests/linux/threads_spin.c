/* Time slicing: 4 threads meet at a barrier that spins without any syscall, then
 * each adds 1 to a shared counter 100000 times with an atomic add (ldrex/strex)
 * and spins again until all are done. Nothing here ever blocks in the kernel, so
 * only preemption lets the threads (and the main thread that creates them) run.
 */
#include <pthread.h>
#include <stdint.h>
#include "guest.h"

enum { NTHREADS = 4, ITERS = 100000 };
static int arrived, finished;
static long counter;

static void *worker(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&arrived, __ATOMIC_SEQ_CST) < NTHREADS)
        ;
    for (int i = 0; i < ITERS; i++)
        __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < NTHREADS)
        ;
    return NULL;
}

int main(void)
{
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&th[i], NULL, worker, NULL) == 0, "pthread_create %d", i);
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0, "pthread_join %d", i);
    say("counter: %ld", counter);
    return guest_done();
}
