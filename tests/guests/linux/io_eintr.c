/* Signals interrupt blocking I/O as on Linux: a SIGALRM (setitimer, 100 ms) ends a
 * blocked read/poll/select/epoll_wait/accept/recv/ppoll with EINTR, or restarts the
 * read and the recv when the handler has SA_RESTART (the handler then feeds them);
 * poll/select/epoll never restart; a receive timeout turns the restart into EINTR;
 * ppoll's mask lets a blocked signal in and the old mask is back afterwards.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include "guest.h"

static volatile int hits;
static int feed_fd = -1;

static void on_alarm(int sig)
{
    (void)sig;
    hits++;
    if (feed_fd >= 0)
        write(feed_fd, "r", 1);
}

static void arm_timer(int restart, int feed)
{
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = restart ? SA_RESTART : 0};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    feed_fd = feed;
    struct itimerval it = {.it_value = {0, 100000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

int main(void)
{
    int p[2];
    pipe(p);
    char c = 0;
    arm_timer(0, -1);
    CHECK_ERR(read(p[0], &c, 1), EINTR, "read interrupted without SA_RESTART: EINTR");
    arm_timer(1, p[1]);
    CHECK(read(p[0], &c, 1) == 1 && c == 'r', "read restarted with SA_RESTART, gets the handler's byte");
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    arm_timer(1, -1);
    CHECK_ERR(poll(&pf, 1, -1), EINTR, "poll: EINTR even with SA_RESTART");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(p[0], &rs);
    arm_timer(1, -1);
    CHECK_ERR(select(p[0] + 1, &rs, NULL, NULL, NULL), EINTR, "select: EINTR");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, out;
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    arm_timer(1, -1);
    CHECK_ERR(epoll_wait(ep, &out, 1, -1), EINTR, "epoll_wait: EINTR");
    close(ep);

    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(srv, (void *)&a, sizeof a);
    listen(srv, 1);
    arm_timer(0, -1);
    CHECK_ERR(accept(srv, NULL, NULL), EINTR, "accept: EINTR");
    close(srv);
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    arm_timer(1, sv[0]);
    CHECK(recv(sv[1], &c, 1, 0) == 1 && c == 'r', "recv restarted with SA_RESTART");
    struct timeval rto = {5, 0};
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof rto);
    arm_timer(1, -1);
    CHECK_ERR(recv(sv[1], &c, 1, 0), EINTR, "recv with SO_RCVTIMEO: EINTR despite SA_RESTART");

    sigset_t alrm, none, now;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    int before = hits;
    arm_timer(1, -1);
    CHECK_ERR(ppoll(&pf, 1, NULL, &none), EINTR, "ppoll lets the blocked SIGALRM in: EINTR");
    sigprocmask(SIG_BLOCK, NULL, &now);
    say("handler ran inside ppoll: %d, SIGALRM blocked again: %d", hits == before + 1, sigismember(&now, SIGALRM));
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);
    say("handler calls: %d", hits);
    return guest_done();
}
