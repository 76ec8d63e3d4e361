/* Processes: the getpid family, fork, wait4, waitid, vfork, exit statuses,
 * death by a signal, execve of a host program, prlimit64, uname, sysinfo,
 * getrandom.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
#include "guest.h"

extern char **environ;

/* "exec-child": what an exec'd copy of this program sees (argv, environment) */
static int exec_child(int argc, char **argv)
{
    say("exec child argc=%d argv0=%s", argc, argv[0]);
    for (int i = 1; i < argc; i++)
        say("exec child argv[%d]=%s", i, argv[i]);
    for (char **e = environ; *e; e++)
        say("exec child env: %s", *e);
    return 5;
}

/* "exec-guest": execve this guest program itself (a guest binary): by its real path and
 * through /proc/self/exe, with a new argv[0] and a two-variable environment. Under
 * qemu-user that needs binfmt_misc; pyqemu runs it under pyqemu-<arch> itself. */
static int exec_guest(int argc, char **argv)
{
    char self[4096] = {0};
    CHECK(readlink("/proc/self/exe", self, sizeof self - 1) > 0, "readlink /proc/self/exe");
    const char *paths[] = {self, "/proc/self/exe"};
    for (int k = 0; k < 2; k++) {
        pid_t child = fork();
        if (child == 0) {
            char *argv[] = {"renamed", "exec-child", "two words", NULL};
            char *envp[] = {"ONLY=this", "AND=that", NULL};
            execve(paths[k], argv, envp);
            say("execve failed: %s", errname(errno));
            _exit(127);
        }
        int status = 0;
        CHECK(waitpid(child, &status, 0) == child, "waitpid");
        say("exec of %s: exited=%d status=%d", k ? "/proc/self/exe" : "the program",
            WIFEXITED(status), WEXITSTATUS(status));
    }
    if (argc > 2) {             /* a script (whose interpreter is a guest program) */
        pid_t child = fork();
        if (child == 0) {
            char *argv2[] = {"script-argv0", "two words", NULL};
            char *envp[] = {"ONLY=this", NULL};
            execve(argv[2], argv2, envp);
            say("execve failed: %s", errname(errno));
            _exit(127);
        }
        int status = 0;
        CHECK(waitpid(child, &status, 0) == child, "waitpid");
        say("exec of the script: exited=%d status=%d", WIFEXITED(status), WEXITSTATUS(status));
    }
    int fd = open("/dev/null", O_RDONLY);
    CHECK(fd >= 0 && fcntl(fd, F_SETFD, 0) == 0, "/dev/null without FD_CLOEXEC");
    char *nx[] = {"x", NULL};
    CHECK_ERR(execve("/dev/null", nx, nx + 1), EACCES, "execve of a non-executable file: EACCES");
    return guest_done();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "exec-child") == 0)
        return exec_child(argc, argv);
    if (argc > 1 && strcmp(argv[1], "exec-guest") == 0)
        return exec_guest(argc, argv);
    pid_t me = getpid();
    CHECK(me > 1, "getpid is a real pid");
    CHECK(syscall(SYS_gettid) == me, "gettid equals getpid in the main thread");
    CHECK(getppid() > 0 && getppid() != me, "getppid differs from getpid");
    /* Both are 0 when the group or session leader lives outside our pid
       namespace (a container started by CI), so only -1 is a failure. */
    CHECK(getpgrp() == getpgid(0) && getsid(0) != -1, "getpgrp and getsid");
    CHECK(getuid() == geteuid() && getgid() == getegid(), "real and effective ids agree");

    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        pid_t info[2] = {getpid(), getppid()};
        write(pfd[1], info, sizeof info);
        _exit(7);
    }
    CHECK(child > 0, "fork");
    pid_t info[2];
    CHECK(read(pfd[0], info, sizeof info) == sizeof info, "read the child's ids");
    CHECK(info[0] == child, "child's getpid is what fork returned");
    CHECK(info[1] == me, "child's getppid is the parent");
    int status = 0;
    struct rusage ru;
    CHECK(wait4(child, &status, 0, &ru) == child, "wait4");
    say("wait4: exited=%d status=%d", WIFEXITED(status), WEXITSTATUS(status));
    CHECK_ERR(wait4(-1, &status, WNOHANG, NULL), ECHILD, "wait4 without children: ECHILD");

    child = fork();
    if (child == 0) {
        char self[4096] = {0}, bypid[4096] = {0}, path[64];
        snprintf(path, sizeof path, "/proc/%d/exe", (int)getpid());
        ssize_t a = readlink("/proc/self/exe", self, sizeof self - 1);
        ssize_t b = readlink(path, bypid, sizeof bypid - 1);
        _exit(a > 0 && a == b && memcmp(self, bypid, a) == 0 && strstr(self, "proc") ? 0 : 1);
    }
    CHECK(waitpid(child, &status, 0) == child, "waitpid");
    say("child's /proc/<pid>/exe is /proc/self/exe: %d", WIFEXITED(status) && WEXITSTATUS(status) == 0);

    child = fork();
    if (child == 0)
        exit(42);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PID, child, &si, WEXITED) == 0, "waitid");
    say("waitid: pid-matches=%d signo=%d code=%s status=%d", si.si_pid == child, si.si_signo,
        si.si_code == CLD_EXITED ? "CLD_EXITED" : "other", si.si_status);

    child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    CHECK(kill(child, SIGTERM) == 0, "kill the child with SIGTERM");
    CHECK(waitpid(child, &status, 0) == child, "waitpid");
    say("killed child: signaled=%d termsig=%d", WIFSIGNALED(status), WTERMSIG(status));

    child = vfork();
    if (child == 0)
        _exit(3);
    CHECK(waitpid(child, &status, 0) == child, "waitpid after vfork");
    say("vfork: status=%d", WEXITSTATUS(status));

    child = fork();
    if (child == 0) {
        char *argv[] = {"sh", "-c", "echo host sh says $0 $1; exit 9", "arg0", "arg1", NULL};
        char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        execve("/bin/sh", argv, envp);
        say("execve failed: %s", errname(errno));
        _exit(127);
    }
    CHECK(waitpid(child, &status, 0) == child, "waitpid after execve");
    say("execve /bin/sh: status=%d", WEXITSTATUS(status));
    char *bad[] = {"nope", NULL};
    CHECK_ERR(execve("/nonexistent/program", bad, bad + 1), ENOENT, "execve of a missing file: ENOENT");

    /* glibc's system/popen/posix_spawn: clone(CLONE_VM|CLONE_VFORK) on a new stack,
     * a fork under qemu-user (so a failing exec is not reported to posix_spawn) */
    int r = system("echo from system; exit 3");
    say("system: %d", WEXITSTATUS(r));
    FILE *pp = popen("echo from popen", "r");
    char pbuf[64] = {0};
    CHECK(pp && fgets(pbuf, sizeof pbuf, pp), "popen read");
    say("popen read: %s", strtok(pbuf, "\n"));
    say("pclose: %d", pclose(pp));
    char *spawn_argv[] = {"sh", "-c", "exit 4", NULL};
    CHECK(posix_spawn(&child, "/bin/sh", NULL, NULL, spawn_argv, environ) == 0, "posix_spawn");
    CHECK(waitpid(child, &status, 0) == child, "waitpid after posix_spawn");
    say("posix_spawn status: %d", WEXITSTATUS(status));

    struct rlimit rl, old;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit RLIMIT_NOFILE");
    rl.rlim_cur = 200;
    rl.rlim_max = old.rlim_max;
    CHECK(prlimit(0, RLIMIT_NOFILE, &rl, NULL) == 0, "prlimit set soft NOFILE to 200");
    CHECK(prlimit(0, RLIMIT_NOFILE, NULL, &rl) == 0, "prlimit get");
    say("RLIMIT_NOFILE soft: %llu", (unsigned long long)rl.rlim_cur);
    CHECK(getrlimit(RLIMIT_CPU, &rl) == 0 && rl.rlim_cur == RLIM_INFINITY, "RLIMIT_CPU is infinite");

    struct utsname u;
    CHECK(uname(&u) == 0, "uname");
    say("uname sysname: %s", u.sysname);
    say("uname machine: %s", u.machine);

    struct sysinfo sinfo;
    CHECK(sysinfo(&sinfo) == 0, "sysinfo");
    CHECK(sinfo.totalram > 0 && sinfo.mem_unit > 0, "sysinfo totalram and mem_unit");
    CHECK(sinfo.uptime > 0 && sinfo.procs > 0, "sysinfo uptime and procs");
    /* no freeram <= totalram: qemu-arm 7.2 cuts both to 32 bits (hosts with > 4 GiB) */

    unsigned char rnd[64];
    memset(rnd, 0, sizeof rnd);
    CHECK(getrandom(rnd, sizeof rnd, 0) == sizeof rnd, "getrandom 64 bytes");
    CHECK(getrandom(rnd, 16, GRND_NONBLOCK) == 16, "getrandom GRND_NONBLOCK");
    int nonzero = 0;
    for (unsigned i = 0; i < sizeof rnd; i++)
        nonzero += rnd[i] != 0;
    CHECK(nonzero > 0, "getrandom gave some non-zero bytes");
    CHECK(sched_yield() == 0, "sched_yield");
    cpu_set_t set;
    CHECK(sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0, "sched_getaffinity");
    return guest_done();
}
