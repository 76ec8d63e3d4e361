/* The initial stack as the emulator sets it up (driven by tests/linux_user/test_main.py).
 *
 * stack [KIB]: prints where the stack is, to 16 MiB ("stack: 0x40" for a stack
 * variable at 0x40xxxxxx), and how far argv/envp lie above it, then recurses
 * KIB KiB deep (1 KiB frames) and prints "recursed KIB KiB": a stack too small
 * for that dies of SIGSEGV at its guard page, as under qemu-user.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned sink;

__attribute__((noinline)) static unsigned recurse(unsigned kib)
{
    volatile unsigned char frame[1000];

    frame[0] = (unsigned char)kib;
    frame[sizeof(frame) - 1] = (unsigned char)(kib >> 8);
    if (kib == 0)
        return frame[0];
    unsigned below = recurse(kib - 1);
    __asm__ volatile("" ::: "memory");
    return below + frame[0] + frame[sizeof(frame) - 1];
}

int main(int argc, char **argv)
{
    volatile int local = 0;
    uintptr_t here = (uintptr_t)&local;

    printf("stack: 0x%lx\n", (unsigned long)(here >> 24));
    printf("argv above the stack variable: %s\n",
           (uintptr_t)argv > here ? "yes" : "no");
    fflush(stdout);
    if (argc > 1) {
        unsigned kib = (unsigned)strtoul(argv[1], NULL, 0);
        sink = recurse(kib);
        printf("recursed %u KiB\n", kib);
    }
    return local;
}
