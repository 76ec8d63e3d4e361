/* Blocking I/O in one thread never stalls the others: a reader blocked in read()
 * on a pipe, a poller in poll(-1), an epoll_wait(-1), an accept() and a recv() on
 * loopback each wait while the main thread (which runs only if they do not hold
 * the CPU) feeds them one by one; a signalfd read in a thread sees a signal
 * queued by the main thread.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include "guest.h"

static int pipe_r[2], pipe_p[2], pipe_e[2], srv, sfd;
static char got_read[8], got_poll[8], got_epoll[8], got_recv[8];
static int got_sig;

static void *reader(void *arg)
{
    (void)arg;
    read(pipe_r[0], got_read, 4);
    return NULL;
}

static void *poller(void *arg)
{
    (void)arg;
    struct pollfd pf = {.fd = pipe_p[0], .events = POLLIN};
    if (poll(&pf, 1, -1) == 1)
        read(pipe_p[0], got_poll, 4);
    return NULL;
}

static void *epoller(void *arg)
{
    (void)arg;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, out;
    epoll_ctl(ep, EPOLL_CTL_ADD, pipe_e[0], &ev);
    if (epoll_wait(ep, &out, 1, -1) == 1)
        read(pipe_e[0], got_epoll, 4);
    close(ep);
    return NULL;
}

static void *acceptor(void *arg)
{
    (void)arg;
    int c = accept(srv, NULL, NULL);
    if (c >= 0) {
        recv(c, got_recv, 4, MSG_WAITALL);
        close(c);
    }
    return NULL;
}

static void *sigreader(void *arg)
{
    (void)arg;
    struct signalfd_siginfo si;
    struct pollfd pf = {.fd = sfd, .events = POLLIN};
    if (poll(&pf, 1, -1) == 1 && read(sfd, &si, sizeof si) == sizeof si)
        got_sig = si.ssi_signo;
    return NULL;
}

int main(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);       /* inherited by every thread */
    sfd = signalfd(-1, &mask, 0);
    pipe(pipe_r);
    pipe(pipe_p);
    pipe(pipe_e);
    srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CHECK(bind(srv, (void *)&a, sizeof a) == 0 && listen(srv, 1) == 0 && getsockname(srv, (void *)&a, &al) == 0,
          "listening socket");
    pthread_t th[5];
    pthread_create(&th[0], NULL, reader, NULL);
    pthread_create(&th[1], NULL, poller, NULL);
    pthread_create(&th[2], NULL, epoller, NULL);
    pthread_create(&th[3], NULL, acceptor, NULL);
    pthread_create(&th[4], NULL, sigreader, NULL);
    usleep(50000);                                 /* let them all block */
    CHECK(write(pipe_r[1], "r-ok", 4) == 4, "feed the reader");
    CHECK(write(pipe_p[1], "p-ok", 4) == 4, "feed the poller");
    CHECK(write(pipe_e[1], "e-ok", 4) == 4, "feed the epoller");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (void *)&a, al) == 0 && send(c, "a-ok", 4, 0) == 4, "connect and send");
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill(SIGUSR1) for the signalfd reader");
    for (int i = 0; i < 5; i++)
        pthread_join(th[i], NULL);
    close(c);
    say("read: %.4s poll: %.4s epoll: %.4s accept+recv: %.4s signalfd: %d", got_read, got_poll, got_epoll,
        got_recv, got_sig);
    return guest_done();
}
