/* Syscall-bound benchmark guest: N (argv[1], default 100000) trips through the
 * kernel with syscall number NR (argv[2], default getppid). Prints the last result
 * and errno, so an unknown number shows ENOSYS (and qemu's -d unimp line).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    long nr = argc > 2 ? atol(argv[2]) : SYS_getppid;
    long ret = 0;
    int err = 0;
    for (long i = 0; i < n; i++) {
        errno = 0;
        ret = syscall(nr);
        err = errno;
    }
    printf("calls=%ld ret=%s errno=%d\n", n, ret == getppid() ? "ppid" : ret == -1 ? "-1" : "?",
           err);
    return 0;
}
