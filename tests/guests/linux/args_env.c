/* argv, envp and the exit status: prints what the guest was given.
 *
 * Usage: args_env [args...]; "exit N" among the arguments makes it exit with N.
 */
#include <stdlib.h>
#include "guest.h"

int main(int argc, char **argv, char **envp)
{
    int status = 0;
    say("argc: %d", argc);
    say("argv[0] basename: %s", base_name(argv[0]));
    for (int i = 1; i < argc; i++)
        say("argv[%d]: [%s]", i, argv[i]);
    CHECK(argv[argc] == NULL, "argv is NULL-terminated");
    int n = 0;
    for (char **e = envp; *e; e++, n++)
        say("env: [%s]", *e);
    say("envc: %d", n);
    const char *path = getenv("PATH");
    say("getenv PATH: %s", path ? path : "(unset)");
    const char *lc = getenv("LC_ALL");
    say("getenv LC_ALL: %s", lc ? lc : "(unset)");
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "exit") == 0)
            status = atoi(argv[i + 1]);
    say("exiting with %d", status);
    guest_done();
    return status;
}
