/* signalfd: blocked signals read as signalfd_siginfo records, seen by poll and
 * epoll, mask changed through signalfd4 on the same fd.
 */
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "guest.h"

int main(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sig = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    CHECK(sig >= 0, "signalfd");
    struct signalfd_siginfo si;
    CHECK_ERR(read(sig, &si, sizeof si), EAGAIN, "signalfd with nothing pending: EAGAIN");
    CHECK_ERR(read(sig, &si, 8), EINVAL, "short read: EINVAL");
    raise(SIGUSR2);
    struct pollfd spf = {.fd = sig, .events = POLLIN};
    CHECK(poll(&spf, 1, 1000) == 1, "poll the signalfd");
    CHECK(read(sig, &si, sizeof si) == sizeof si, "read a signalfd_siginfo");
    say("signalfd: signo=%u pid-ok=%d code=%d", si.ssi_signo, si.ssi_pid == (uint32_t)getpid(), si.ssi_code);
    spf.revents = 0;
    CHECK(poll(&spf, 1, 0) == 0, "nothing left after the read");

    union sigval v = {.sival_int = 77};
    sigqueue(getpid(), SIGUSR1, v);
    raise(SIGUSR2);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 5};
    epoll_ctl(ep, EPOLL_CTL_ADD, sig, &ev);
    struct epoll_event out;
    CHECK(epoll_wait(ep, &out, 1, 1000) == 1 && out.data.u32 == 5, "epoll sees the signalfd");
    struct signalfd_siginfo two[2];
    CHECK(read(sig, two, sizeof two) == sizeof two, "two records in one read");
    say("first: signo=%u code=%d int=%d; second: signo=%u", two[0].ssi_signo, two[0].ssi_code, two[0].ssi_int,
        two[1].ssi_signo);

    sigset_t only1;
    sigemptyset(&only1);
    sigaddset(&only1, SIGUSR1);
    CHECK(signalfd(sig, &only1, 0) == sig, "signalfd4 on the same fd changes the mask");
    raise(SIGUSR2);
    CHECK_ERR(read(sig, &si, sizeof si), EAGAIN, "SIGUSR2 no longer read");
    sigset_t pend;
    sigpending(&pend);
    say("SIGUSR2 still pending: %d", sigismember(&pend, SIGUSR2));
    CHECK_ERR(signalfd(0, &only1, 0), EINVAL, "signalfd4 on a non-signalfd: EINVAL");
    close(ep);
    close(sig);
    return guest_done();
}
