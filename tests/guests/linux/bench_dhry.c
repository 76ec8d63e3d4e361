/* CPU-bound benchmark guest in the spirit of Dhrystone (our own code, not its
 * source): argv[1] iterations (default 2000000) of a loop mixing what typical
 * system code does: record assignment and field updates through pointers, calls
 * through a table of small functions, an enum state machine, fixed-size string
 * copies and comparisons, and one- and two-dimensional array indexing. Prints a
 * checksum, so qemu-user and pyqemu can be compared.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum state { IDLE, READY, BUSY, DONE, NSTATES };

struct rec {
    struct rec *link;
    enum state st;
    int num;
    int vals[4];
    char name[32];
};

static int grid[32][32];
static int line[64];
static struct rec recs[8];

static __attribute__((noinline)) int add3(int a, int b, int c) { return a + b + c; }
static __attribute__((noinline)) int mix(int a, int b, int c) { return (a ^ b) - c; }
static __attribute__((noinline)) int pick(int a, int b, int c) { return a > b ? c : a - b; }
static int (*const ops[3])(int, int, int) = {add3, mix, pick};

static __attribute__((noinline)) enum state step(enum state s, int v)
{
    switch (s) {
    case IDLE: return v & 1 ? READY : IDLE;
    case READY: return v & 2 ? BUSY : DONE;
    case BUSY: return v & 4 ? DONE : BUSY;
    default: return IDLE;
    }
}

static __attribute__((noinline)) void update(struct rec *r, int i)
{
    struct rec tmp = *r->link;           /* record copy */
    tmp.num += i;
    tmp.vals[i & 3] = tmp.num ^ r->num;
    tmp.st = step(r->st, i);
    r->num = tmp.vals[(i + 1) & 3] + tmp.num;
    r->st = tmp.st;
    *r->link = tmp;
    r->link->link = r->link == &recs[7] ? &recs[0] : r->link + 1;
}

static __attribute__((noinline)) int strings(int i, char *buf)
{
    static const char *const words[4] = {
        "ALPHA RECORD, FIRST STRING", "BRAVO RECORD, 2ND STRING",
        "CHARLIE RECORD, THIRD STR", "ALPHA RECORD, FIRST STRINX",
    };
    strcpy(buf, words[i & 3]);
    buf[i % 20] = (char)('A' + i % 26);
    return strcmp(buf, words[(i + 1) & 3]) > 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    char buf[32];
    uint32_t sum = 0;
    for (int i = 0; i < 8; i++) {
        recs[i].link = &recs[(i + 1) & 7];
        recs[i].num = i * 7;
        snprintf(recs[i].name, sizeof(recs[i].name), "record %d", i);
    }
    for (long i = 0; i < n; i++) {
        int k = (int)(i & 0x7fff);
        struct rec *r = &recs[k & 7];
        update(r, k);
        int v = ops[k % 3](r->num, k, (int)sum);
        line[k & 63] = v;
        grid[k & 31][(k >> 5) & 31] += line[(k + 7) & 63];
        if ((i & 15) == 0)
            sum += (uint32_t)strings(k, buf) + (uint8_t)buf[3];
        sum = sum * 33 + (uint32_t)v + (uint32_t)r->st;
    }
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 32; j++)
            sum = sum * 31 + (uint32_t)grid[i][j];
    for (int i = 0; i < 8; i++)
        sum = sum * 31 + (uint32_t)recs[i].num + recs[i].st;
    printf("%08x\n", sum);
    return 0;
}
