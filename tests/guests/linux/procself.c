/* /proc views of the guest: /proc/self/exe, cmdline, maps, stat, auxv,
 * getauxval, /proc/cpuinfo. Prints only what does not change between runs.
 * With the argument "cpuinfo" it also prints what /proc/cpuinfo says about the
 * CPU's architecture (qemu-user 7.2 shows the host's file there).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <unistd.h>
#include "guest.h"

static size_t slurp(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, size - 1 - got);
        if (r <= 0)
            break;
        got += r;
    }
    close(fd);
    buf[got] = 0;
    return got;
}

static char big[1 << 20];

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "hwcap") == 0) {
        say("AT_HWCAP=%#lx AT_HWCAP2=%#lx AT_PLATFORM=%s", getauxval(AT_HWCAP),
            getauxval(AT_HWCAP2), (char *)getauxval(AT_PLATFORM));
        return 0;
    }
    char exe[4096] = {0};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0, "readlink /proc/self/exe");
    say("exe basename matches argv[0]: %d", strcmp(base_name(exe), base_name(argv[0])) == 0);
    char rp[4096];
    CHECK(realpath(argv[0], rp) && strcmp(rp, exe) == 0, "/proc/self/exe is the program's real path");

    size_t len = slurp("/proc/self/cmdline", big, sizeof big);
    int args = 0;
    for (size_t i = 0; i < len; i += strlen(big + i) + 1) {
        if (args == 0)
            say("cmdline[0] basename: %s", base_name(big + i));
        else
            say("cmdline[%d]: %s", args, big + i);
        args++;
    }
    say("cmdline has argc entries: %d", args == argc);

    len = slurp("/proc/self/maps", big, sizeof big);
    CHECK(len > 0, "read /proc/self/maps");
    int prog_lines = 0, stack = 0, exec_prog = 0;
    for (char *line = strtok(big, "\n"); line; line = strtok(NULL, "\n")) {
        if (strstr(line, base_name(exe))) {
            prog_lines++;
            if (strstr(line, " r-xp "))
                exec_prog = 1;
        }
        if (strstr(line, "[stack]"))
            stack = 1;
    }
    say("maps: program mapped=%d with an r-xp mapping=%d [stack]=%d", prog_lines > 0, exec_prog, stack);

    len = slurp("/proc/self/stat", big, sizeof big);
    CHECK(len > 0, "read /proc/self/stat");
    say("stat pid field is getpid: %d", atoi(big) == getpid());
    char *open_paren = strchr(big, '('), *close_paren = strrchr(big, ')');
    CHECK(open_paren && close_paren && close_paren[1] == ' ', "stat has (comm)");
    char comm[64] = {0};
    slurp("/proc/self/comm", comm, sizeof comm);
    CHECK(strlen(comm) > 0, "/proc/self/comm is non-empty");

    len = slurp("/proc/self/auxv", big, sizeof big);
    CHECK(len > 0 && len % (2 * sizeof(unsigned long)) == 0, "read /proc/self/auxv");
    unsigned long *av = (unsigned long *)big;
    unsigned long pagesz = 0, entry = 0, phdr = 0, last = 1;
    for (size_t i = 0; i + 1 < len / sizeof(unsigned long); i += 2) {
        if (av[i] == AT_PAGESZ)
            pagesz = av[i + 1];
        if (av[i] == AT_ENTRY)
            entry = av[i + 1];
        if (av[i] == AT_PHDR)
            phdr = av[i + 1];
        last = av[i];
    }
    say("auxv: AT_PAGESZ=%lu ends with AT_NULL=%d", pagesz, last == AT_NULL);
    CHECK(entry == getauxval(AT_ENTRY) && entry != 0, "auxv AT_ENTRY matches getauxval");
    CHECK(phdr == getauxval(AT_PHDR) && phdr != 0, "auxv AT_PHDR matches getauxval");
    say("getauxval AT_PAGESZ=%lu AT_PLATFORM=%s", getauxval(AT_PAGESZ),
        getauxval(AT_PLATFORM) ? (char *)getauxval(AT_PLATFORM) : "(none)");
    CHECK(getauxval(AT_HWCAP) != 0, "AT_HWCAP is non-zero");
    CHECK(getauxval(AT_RANDOM) != 0, "AT_RANDOM is set");
    CHECK(getauxval(AT_EXECFN) && strcmp((char *)getauxval(AT_EXECFN), argv[0]) == 0, "AT_EXECFN is argv[0]");
    say("AT_UID/EUID/GID/EGID are ours: %d", getauxval(AT_UID) == getuid() && getauxval(AT_EUID) == geteuid() &&
        getauxval(AT_GID) == getgid() && getauxval(AT_EGID) == getegid());
    say("AT_SECURE: %lu", getauxval(AT_SECURE));

    len = slurp("/proc/cpuinfo", big, sizeof big);
    say("cpuinfo non-empty: %d", len > 0);
    if (argc > 1 && strcmp(argv[1], "cpuinfo") == 0) {
        const char *keys[] = {"CPU architecture", "model name", "Processor", "Features", NULL};
        for (char *line = strtok(big, "\n"); line; line = strtok(NULL, "\n")) {
            for (int k = 0; keys[k]; k++)
                if (strncmp(line, keys[k], strlen(keys[k])) == 0) {
                    say("cpuinfo: %s", line);
                    keys[k] = "\x01";
                }
        }
    }
    return guest_done();
}
