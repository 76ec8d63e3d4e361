/* CPU-bound benchmark guest: integer loops. argv[1] rounds (default 10); each round
 * runs a sieve of Eratosthenes over 1<<18 numbers, Collatz chain lengths, an
 * xorshift/multiply hash over an array with data-dependent indexing, and integer
 * division/modulo. Prints one checksum, so qemu-user and pyqemu can be compared.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SIEVE = 1 << 18, TABLE = 4096 };

static uint8_t composite[SIEVE];
static uint32_t table[TABLE];

static uint32_t sieve(void)
{
    uint32_t count = 0, sum = 0;
    memset(composite, 0, sizeof(composite));
    for (uint32_t i = 2; i < SIEVE; i++) {
        if (composite[i])
            continue;
        count++;
        sum += i;
        for (uint32_t j = i * 2; j < SIEVE; j += i)
            composite[j] = 1;
    }
    return count * 2654435761u + sum;
}

static uint32_t collatz(uint32_t from, uint32_t n)
{
    uint32_t best = 0, acc = 0;
    for (uint32_t s = from; s < from + n; s++) {
        uint64_t x = s;
        uint32_t len = 0;
        while (x != 1) {
            x = (x & 1) ? 3 * x + 1 : x >> 1;
            len++;
        }
        if (len > best)
            best = len;
        acc += len;
    }
    return best ^ (acc << 7);
}

static uint32_t shuffle(uint32_t seed)
{
    uint32_t x = seed | 1;
    for (int i = 0; i < TABLE; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        table[i] = x;
    }
    uint32_t h = 0;
    for (int k = 0; k < 64 * TABLE; k++) {
        uint32_t v = table[h % TABLE];
        h = (h ^ v) * 0x9e3779b1u + (uint32_t)k;
        table[(v >> 7) % TABLE] += h >> 3;
    }
    return h;
}

static uint32_t divisions(uint32_t n)
{
    uint32_t acc = 0;
    for (uint32_t i = 1; i < n; i++)
        acc += (0xfffffffbu / i) ^ (n % i) ^ (uint32_t)((int32_t)(acc ^ i) / 7);
    return acc;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    uint32_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        sum = sum * 31 + sieve();
        sum = sum * 31 + collatz(1 + (uint32_t)r * 1000, 20000);
        sum = sum * 31 + shuffle(sum);
        sum = sum * 31 + divisions(100000);
    }
    printf("%08x\n", sum);
    return 0;
}
