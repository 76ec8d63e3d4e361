/* malloc-heavy benchmark/test guest: a deterministic mix of small, medium and
 * large (mmap-threshold) allocations, reallocs and frees; prints a checksum of
 * the contents so a lost or corrupted byte shows. ROUNDS = argv[1] (default 20000).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 512

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 20000;
    static unsigned char *slot[SLOTS];
    static size_t len[SLOTS];
    uint32_t x = 12345, sum = 0;
    for (long r = 0; r < rounds; r++) {
        x = x * 1103515245u + 12345u;
        unsigned i = (x >> 8) % SLOTS;
        size_t want = (x >> 20) % 8 == 0 ? 150000 + (x % 400000) : 1 + (x >> 4) % 3000;
        if (slot[i] && (x & 1)) {
            for (size_t k = 0; k < len[i]; k += 61)
                sum = sum * 31 + slot[i][k];
            free(slot[i]);
            slot[i] = NULL;
        } else if (slot[i]) {
            unsigned char *p = realloc(slot[i], want);
            if (!p)
                return 2;
            if (want > len[i])
                memset(p + len[i], (int)(r & 0xff), want - len[i]);
            slot[i] = p;
            len[i] = want;
        } else {
            slot[i] = malloc(want);
            if (!slot[i])
                return 2;
            memset(slot[i], (int)(x & 0xff), want);
            len[i] = want;
        }
    }
    for (unsigned i = 0; i < SLOTS; i++) {
        for (size_t k = 0; k < len[i] && slot[i]; k += 61)
            sum = sum * 31 + slot[i][k];
        free(slot[i]);
    }
    printf("checksum %08x\n", sum);
    return 0;
}
