/* Syscall benchmark guest: argv[1] iterations (default 100000) of three system calls,
 * getpid (raw, so no library caching), a 1-byte write to /dev/null and stat() of
 * /dev/null. Prints how many succeeded, so qemu-user and pyqemu can be compared.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int fd = open("/dev/null", O_WRONLY);
    long pid = syscall(SYS_getpid), ok = 0;
    struct stat st;
    if (fd < 0)
        return 1;
    for (long i = 0; i < n; i++) {
        ok += syscall(SYS_getpid) == pid;
        ok += write(fd, "x", 1) == 1;
        ok += stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode);
    }
    printf("%ld of %ld\n", ok, 3 * n);
    return 0;
}
