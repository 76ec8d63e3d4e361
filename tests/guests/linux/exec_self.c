/* execve of a guest program from a guest: the program runs itself again, once
 * through /proc/self/exe and once through its own path, with arguments and an
 * environment of its choosing; the child reports what it got and exits 5.
 *
 * Under qemu-user this needs binfmt_misc for the architecture (else the host
 * kernel answers ENOEXEC); pyqemu runs the new program under itself.
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "guest.h"

static void run(const char *how, const char *path, char *argv0)
{
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {argv0, "child", (char *)how, NULL};
        char *envp[] = {"GUEST_EXEC=yes", NULL};
        execve(path, argv, envp);
        say("execve via %s failed: %s", how, errname(errno));
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    say("execve via %s: exit status %d", how, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

int main(int argc, char **argv, char **envp)
{
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        int n = 0;
        for (char **e = envp; *e; e++)
            n++;
        say("child: argc=%d argv[2]=%s argv[0]-basename=%s env=%s envc=%d", argc, argc > 2 ? argv[2] : "-",
            base_name(argv[0]), getenv("GUEST_EXEC") ? getenv("GUEST_EXEC") : "(unset)", n);
        return 5;
    }
    run("/proc/self/exe", "/proc/self/exe", argv[0]);
    run("argv[0]", argv[0], argv[0]);
    return 0;
}
