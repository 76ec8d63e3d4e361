/* I/O multiplexing: pipe2, fcntl, dup3, F_DUPFD_CLOEXEC, poll, ppoll, select,
 * pselect, epoll (data preserved), eventfd (counter and semaphore); signalfd is
 * in signalfd.c.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
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


    /* a poll that waits: empty pipe, 30 ms */
    int w[2];
    CHECK(pipe(w) == 0, "pipe");
    struct pollfd wp = {.fd = w[0], .events = POLLIN};
    CHECK(poll(&wp, 1, 30) == 0 && wp.revents == 0, "poll with a timeout on an empty pipe: 0");
    struct timespec wts = {0, 20000000};
    CHECK(ppoll(&wp, 1, &wts, NULL) == 0, "ppoll with a timeout: 0");
    struct epoll_event wev = {.events = EPOLLIN, .data.fd = w[0]};
    int ep2 = epoll_create(4);
    CHECK(ep2 >= 0 && epoll_ctl(ep2, EPOLL_CTL_ADD, w[0], &wev) == 0, "epoll_create (old call)");
    CHECK(epoll_wait(ep2, out, 4, 20) == 0, "epoll_wait with a timeout: 0");
    write(w[1], "z", 1);
    CHECK(epoll_wait(ep2, out, 4, -1) == 1 && out[0].data.fd == w[0], "epoll_wait without a timeout: ready fd");
    CHECK_ERR(epoll_wait(ep2, out, 0, 0), EINVAL, "epoll_wait maxevents 0: EINVAL");
    CHECK_ERR(epoll_ctl(ep2, EPOLL_CTL_ADD, 999, &wev), EBADF, "epoll_ctl of a closed fd: EBADF");
    close(ep2);
    /* select on a high fd number */
    int hi = dup2(w[0], 200);
    fd_set hs;
    FD_ZERO(&hs);
    FD_SET(hi, &hs);
    CHECK(select(hi + 1, &hs, NULL, NULL, NULL) == 1 && FD_ISSET(hi, &hs), "select on fd 200");
    CHECK_ERR(select(-1, NULL, NULL, NULL, NULL), EINVAL, "select with nfds -1: EINVAL");
    close(hi);
    close(w[0]);
    close(w[1]);

    /* record locks: classic (seen from a child) and OFD (seen from another open) */
    char lpath[] = "/tmp/pyqemu-lock.XXXXXX";
    int lf = mkstemp(lpath);
    CHECK(lf >= 0 && write(lf, "0123456789abcdef", 16) == 16, "lock file");
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 2, .l_len = 6};
    CHECK(fcntl(lf, F_SETLK, &fl) == 0, "F_SETLK write lock on bytes 2..7");
    struct flock lq = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4};
    CHECK(fcntl(lf, F_GETLK, &lq) == 0 && lq.l_type == F_UNLCK, "F_GETLK: our own lock does not conflict");
    struct flock wl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 2};
    CHECK(fcntl(lf, F_SETLKW, &wl) == 0, "F_SETLKW on a free range");
    fl.l_type = F_UNLCK;
    fl.l_start = 0;
    fl.l_len = 0;
    CHECK(fcntl(lf, F_SETLK, &fl) == 0, "F_SETLK unlock the whole file");
    int of1 = open(lpath, O_RDWR), of2 = open(lpath, O_RDWR);
    struct flock ofl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = 0};
    CHECK(fcntl(of1, F_OFD_SETLK, &ofl) == 0, "F_OFD_SETLK whole file");
    struct flock oq = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1, .l_pid = 0};
    CHECK(fcntl(of2, F_OFD_GETLK, &oq) == 0 && oq.l_type == F_WRLCK && oq.l_pid == -1,
          "F_OFD_GETLK from another open file sees it (l_pid -1)");
    oq.l_pid = 0;
    CHECK_ERR(fcntl(of2, F_OFD_SETLK, &oq), EAGAIN, "F_OFD_SETLK conflict: EAGAIN");
    CHECK(flock(of2, LOCK_SH | LOCK_NB) == 0 && flock(of2, LOCK_UN) == 0, "flock shared and unlock");
    close(of1);
    close(of2);
    CHECK(fcntl(lf, F_GETPIPE_SZ) == -1 && fcntl(p[0], F_GETPIPE_SZ) > 0, "F_GETPIPE_SZ on a pipe only");
    CHECK(fcntl(lf, F_SETOWN, getpid()) == 0 && fcntl(lf, F_GETOWN) == getpid(), "F_SETOWN / F_GETOWN");
    close(lf);
    unlink(lpath);

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
