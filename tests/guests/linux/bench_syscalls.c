/* Syscall-heavy benchmark: N getpid calls, N one-byte writes to /dev/null and
 * N stat calls (N from the argument, default 10000); prints the counts only.
 *
 * Usage: bench_syscalls [N]
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000;
    long ok = 0;
    pid_t me = (pid_t)syscall(SYS_getpid);
    for (long i = 0; i < n; i++)
        ok += syscall(SYS_getpid) == me;
    say("getpid: %ld of %ld", ok, n);
    int fd = open("/dev/null", O_WRONLY);
    ok = 0;
    for (long i = 0; i < n; i++)
        ok += write(fd, "x", 1) == 1;
    close(fd);
    say("1-byte writes: %ld of %ld", ok, n);
    struct stat st;
    ok = 0;
    for (long i = 0; i < n; i++)
        ok += stat("/", &st) == 0;
    say("stat: %ld of %ld", ok, n);
    return 0;
}
