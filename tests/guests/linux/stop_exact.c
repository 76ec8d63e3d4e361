/* Asynchronous stops must not re-run or skip guest instructions.
 *
 * 4 threads compute without any syscall (so only the watchdog's emu_stop switches
 * them), each on its own memory: read-modify-write counters through volatile
 * pointers (load, add, store; post-indexed loads and stores with base writeback;
 * load/store multiple through struct copies) and a SHA-256-like mix of a private
 * buffer; a walk along a linked list. A shared total is updated under a spin lock built on an atomic exchange
 * (ldrex/strex, ldxr/stxr), so its value is exact on any correct emulator. An
 * instruction run twice after a stop (a store that already happened, an add
 * applied again) or a lost one changes a checksum. argv[1]: rounds (default 40).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include "guest.h"

enum { NTHREADS = 4, SLOTS = 64, WORDS = 256, NODES = 1024 };

struct quad { uint32_t a, b, c, d; };
struct node { struct node *next; uint32_t val; };

static int spin;
static uint64_t total;
static int rounds = 40;

struct work {
    volatile uint32_t counters[SLOTS];
    uint32_t buf[WORDS];
    struct quad q[16];
    struct node nodes[NODES];
    uint64_t sum;
    int id;
};

static void lock(void)
{
    while (__atomic_exchange_n(&spin, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&spin, __ATOMIC_RELAXED))
            ;
}

static void unlock(void)
{
    __atomic_store_n(&spin, 0, __ATOMIC_RELEASE);
}

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void *worker(void *arg)
{
    struct work *w = arg;
    uint32_t x = 0x9e3779b9u * (uint32_t)(w->id + 1);
    for (int i = 0; i < WORDS; i++)
        w->buf[i] = x = x * 1664525u + 1013904223u;
    for (int i = 0; i < NODES; i++) {      /* one ring through all nodes (full-period LCG) */
        w->nodes[i].next = &w->nodes[(i * 517 + 1) & (NODES - 1)];
        w->nodes[i].val = (uint32_t)i * 2654435761u;
    }
    struct node *n = &w->nodes[0];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 4096; i++) {
            w->counters[i & (SLOTS - 1)] += (uint32_t)i ^ x;     /* ldr, add, str */
            w->counters[(i * 7) & (SLOTS - 1)]++;
            x = ROR(x, 7) ^ (x + w->counters[(i + 3) & (SLOTS - 1)]);
        }
        /* pointer walks: post-indexed loads/stores with base writeback */
        uint32_t *p = w->buf, *end = w->buf + WORDS;
        uint32_t acc = x;
        while (p < end) {
            uint32_t v = *p;
            acc = ROR(acc, 11) + (v ^ (acc >> 3));
            *p++ = v + acc;
        }
        /* struct copies: load/store multiple (ldm/stm, ldp/stp) */
        for (int i = 15; i > 0; i--) {
            struct quad t = w->q[i - 1];
            t.a += acc; t.b ^= t.a; t.c += t.b; t.d ^= ROR(t.c, 5);
            w->q[i] = t;
        }
        w->q[0].a = acc;
        /* pointer chasing: a load whose address register is its destination
           (aarch64: ldr x0, [x0]) is wrong if run twice */
        for (int i = 0; i < 2048; i++) {
            acc += n->val;
            n = n->next;
        }
        n->val += acc;
        lock();
        total += acc & 0xffff;
        unlock();
        x ^= acc;
    }
    uint64_t s = x;
    for (int i = 0; i < SLOTS; i++)
        s = s * 31 + w->counters[i];
    for (int i = 0; i < WORDS; i++)
        s = s * 33 + w->buf[i];
    for (int i = 0; i < 16; i++)
        s = s * 37 + (w->q[i].a ^ w->q[i].b ^ w->q[i].c ^ w->q[i].d);
    w->sum = s;
    return NULL;
}

int main(int argc, char **argv)
{
    static struct work works[NTHREADS];
    pthread_t th[NTHREADS];
    if (argc > 1)
        rounds = atoi(argv[1]);
    for (int i = 0; i < NTHREADS; i++) {
        works[i].id = i;
        CHECK(pthread_create(&th[i], NULL, worker, &works[i]) == 0, "pthread_create %d", i);
    }
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0, "pthread_join %d", i);
    for (int i = 0; i < NTHREADS; i++)
        say("thread %d: %016llx", i, (unsigned long long)works[i].sum);
    say("total: %llu", (unsigned long long)total);
    return guest_done();
}
