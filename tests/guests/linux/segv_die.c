/* Killed by SIGSEGV: no handler, a store to address 0. Core dumps are
 * switched off first (RLIMIT_CORE 0) so no core file is left behind.
 */
#include <signal.h>
#include <sys/resource.h>
#include "guest.h"

int main(void)
{
    struct rlimit rl = {0, 0};
    CHECK(setrlimit(RLIMIT_CORE, &rl) == 0, "RLIMIT_CORE 0");
    say("about to store to NULL");
    *(volatile int *)0 = 1;
    say("still alive");
    return guest_done();
}
