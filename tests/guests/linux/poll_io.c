/* I/O multiplexing: pipe2, fcntl, dup3, F_DUPFD_CLOEXEC, poll, ppoll, select,
 * pselect, epoll (data preserved), eventfd (counter and semaphore), signalfd.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "guest.h"

int main(void)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2 O_CLOEXEC|O_NONBLOCK");
    CHECK(fcntl(p[0], F_GETFD) == FD_CLOEXEC, "F_GETFD shows FD_CLOEXEC");
    CHECK((fcntl(p[0], F_GETFL) & O_NONBLOCK) && (fcntl(p[0], F_GETFL) & O_ACCMODE) == O_RDONLY,
          "F_GETFL shows O_NONBLOCK and O_RDONLY");
    CHECK((fcntl(p[1], F_GETFL) & O_ACCMODE) == O_WRONLY, "write end is O_WRONLY");
    char c;
    CHECK_ERR(read(p[0], &c, 1), EAGAIN, "read of an empty non-blocking pipe: EAGAIN");

    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    CHECK(poll(&pf, 1, 0) == 0 && pf.revents == 0, "poll of an empty pipe: nothing");
    CHECK(write(p[1], "abc", 3) == 3, "write 3 bytes");
    CHECK(poll(&pf, 1, 1000) == 1 && pf.revents == POLLIN, "poll: POLLIN");
    struct timespec ts = {1, 0};
    sigset_t none;
    sigemptyset(&none);
    pf.revents = 0;
    CHECK(ppoll(&pf, 1, &ts, &none) == 1 && pf.revents == POLLIN, "ppoll: POLLIN");
    struct pollfd wpf = {.fd = p[1], .events = POLLOUT};
    CHECK(poll(&wpf, 1, 0) == 1 && wpf.revents == POLLOUT, "poll write end: POLLOUT");
    struct pollfd bad = {.fd = 999, .events = POLLIN};
    CHECK(poll(&bad, 1, 0) == 1 && bad.revents == POLLNVAL, "poll of a closed fd: POLLNVAL");

    fd_set rfds, wfds;
    FD_ZERO(&rfds);
    FD_ZERO(&wfds);
    FD_SET(p[0], &rfds);
    FD_SET(p[1], &wfds);
    struct timeval tv = {1, 0};
    int n = select((p[0] > p[1] ? p[0] : p[1]) + 1, &rfds, &wfds, NULL, &tv);
    CHECK(n == 2 && FD_ISSET(p[0], &rfds) && FD_ISSET(p[1], &wfds), "select: readable and writable");
    FD_ZERO(&rfds);
    FD_SET(p[0], &rfds);
    CHECK(pselect(p[0] + 1, &rfds, NULL, NULL, &ts, &none) == 1, "pselect: readable");
    char buf[16];
    CHECK(read(p[0], buf, sizeof buf) == 3 && memcmp(buf, "abc", 3) == 0, "read back 'abc'");
    FD_ZERO(&rfds);
    FD_SET(p[0], &rfds);
    struct timeval zero = {0, 0};
    CHECK(select(p[0] + 1, &rfds, NULL, NULL, &zero) == 0, "select after draining: timeout");

    int d = dup3(p[1], 100, O_CLOEXEC);
    CHECK(d == 100, "dup3 to fd 100");
    CHECK(fcntl(100, F_GETFD) == FD_CLOEXEC, "dup3 O_CLOEXEC");
    CHECK_ERR(dup3(100, 100, 0), EINVAL, "dup3 onto itself: EINVAL");
    int e = fcntl(p[0], F_DUPFD_CLOEXEC, 50);
    CHECK(e >= 50, "F_DUPFD_CLOEXEC gives an fd >= 50");
    CHECK(fcntl(e, F_SETFL, 0) == 0 && !(fcntl(p[0], F_GETFL) & O_NONBLOCK), "F_SETFL is shared by duplicates");
    fcntl(e, F_SETFL, O_NONBLOCK);
    CHECK(fcntl(e, F_SETFD, 0) == 0 && fcntl(e, F_GETFD) == 0, "F_SETFD clears close-on-exec");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1122334455667788ULL};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0, "epoll_ctl ADD");
    CHECK_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev), EEXIST, "epoll_ctl ADD again: EEXIST");
    struct epoll_event out[4];
    CHECK(epoll_wait(ep, out, 4, 0) == 0, "epoll_wait with nothing ready");
    write(100, "x", 1);
    memset(out, 0, sizeof out);
    CHECK(epoll_wait(ep, out, 4, 1000) == 1, "epoll_wait: one event");
    say("epoll event: events=%x data=%llx", out[0].events, (unsigned long long)out[0].data.u64);
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = 7;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev) == 0, "epoll_ctl MOD to edge-triggered");
    CHECK(epoll_pwait(ep, out, 4, 1000, &none) == 1 && out[0].data.u64 == 7, "epoll_pwait sees the new data");
    CHECK(epoll_wait(ep, out, 4, 0) == 0, "edge-triggered: no second event");
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL) == 0, "epoll_ctl DEL");
    read(p[0], buf, sizeof buf);

    int efd = eventfd(3, EFD_NONBLOCK);
    CHECK(efd >= 0, "eventfd(3)");
    uint64_t v = 4;
    CHECK(write(efd, &v, 8) == 8, "eventfd add 4");
    CHECK(read(efd, &v, 8) == 8, "eventfd read");
    say("eventfd counter: %llu", (unsigned long long)v);
    CHECK_ERR(read(efd, &v, 8), EAGAIN, "eventfd empty: EAGAIN");
    close(efd);
    int sfd = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
    CHECK(read(sfd, &v, 8) == 8 && v == 1 && read(sfd, &v, 8) == 8 && v == 1, "EFD_SEMAPHORE reads 1 twice");
    CHECK_ERR(read(sfd, &v, 8), EAGAIN, "then EAGAIN");
    close(sfd);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sig = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    CHECK(sig >= 0, "signalfd");
    struct signalfd_siginfo si;
    CHECK_ERR(read(sig, &si, sizeof si), EAGAIN, "signalfd with nothing pending: EAGAIN");
    raise(SIGUSR2);
    struct pollfd spf = {.fd = sig, .events = POLLIN};
    CHECK(poll(&spf, 1, 1000) == 1, "poll the signalfd");
    CHECK(read(sig, &si, sizeof si) == sizeof si, "read a signalfd_siginfo");
    say("signalfd: signo=%u pid-ok=%d", si.ssi_signo, si.ssi_pid == (uint32_t)getpid());

    close(p[1]);
    close(100);
    pf.revents = 0;
    CHECK(poll(&pf, 1, 1000) == 1 && (pf.revents & POLLHUP), "poll after the writers closed: POLLHUP");
    CHECK(read(p[0], buf, sizeof buf) == 0, "read at EOF gives 0");
    int q[2];
    pipe(q);
    close(q[0]);
    signal(SIGPIPE, SIG_IGN);
    CHECK_ERR(write(q[1], "x", 1), EPIPE, "write to a pipe without readers: EPIPE");
    return guest_done();
}
