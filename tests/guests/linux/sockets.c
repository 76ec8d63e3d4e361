/* Sockets: socketpair (stream and datagram), SCM_RIGHTS, AF_UNIX bound to a
 * path, AF_INET and AF_INET6 loopback TCP and UDP with getsockname /
 * getpeername / recvfrom addresses checked, socket options, sendmsg/recvmsg
 * with several iovecs, MSG_PEEK, shutdown. Ports are chosen by the kernel and
 * never printed.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "guest.h"

static void stream_echo(int family, const char *what)
{
    struct sockaddr_storage addr;
    socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)&addr;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (void *)&addr;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    }
    int srv = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(srv >= 0, "%s TCP socket", what);
    int one = 1;
    CHECK(setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0, "%s SO_REUSEADDR", what);
    CHECK(bind(srv, (void *)&addr, len) == 0, "%s bind to loopback port 0", what);
    CHECK(listen(srv, 4) == 0, "%s listen", what);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    CHECK(getsockname(srv, (void *)&bound, &blen) == 0 && blen == len, "%s getsockname length", what);
    char host[64] = "";
    int port;
    if (family == AF_INET) {
        struct sockaddr_in *b = (void *)&bound;
        inet_ntop(AF_INET, &b->sin_addr, host, sizeof host);
        port = ntohs(b->sin_port);
    } else {
        struct sockaddr_in6 *b = (void *)&bound;
        inet_ntop(AF_INET6, &b->sin6_addr, host, sizeof host);
        port = ntohs(b->sin6_port);
    }
    say("%s bound: family-ok=%d host=%s port-nonzero=%d", what, bound.ss_family == family, host, port != 0);

    int cli = socket(family, SOCK_STREAM, 0);
    CHECK(connect(cli, (void *)&bound, blen) == 0, "%s connect", what);
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int conn = accept4(srv, (void *)&peer, &plen, SOCK_CLOEXEC);
    CHECK(conn >= 0, "%s accept4", what);
    CHECK(peer.ss_family == family && plen == len, "%s accept gives the peer address", what);
    struct sockaddr_storage cpeer;
    socklen_t cplen = sizeof cpeer;
    CHECK(getpeername(cli, (void *)&cpeer, &cplen) == 0 && memcmp(&cpeer, &bound, blen) == 0,
          "%s getpeername is the server's address", what);
    CHECK(setsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "%s TCP_NODELAY", what);
    int val = 0;
    socklen_t vlen = sizeof val;
    CHECK(getsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &val, &vlen) == 0 && val != 0, "%s TCP_NODELAY reads back", what);
    CHECK(getsockopt(cli, SOL_SOCKET, SO_TYPE, &val, &vlen) == 0 && val == SOCK_STREAM, "%s SO_TYPE", what);
    CHECK(send(cli, "ping", 4, 0) == 4, "%s send", what);
    char buf[64] = {0};
    size_t got = 0;
    while (got < 4) {
        ssize_t r = recv(conn, buf + got, sizeof buf - got, 0);
        if (r <= 0)
            break;
        got += r;
    }
    CHECK(got == 4 && memcmp(buf, "ping", 4) == 0, "%s server got 'ping'", what);
    CHECK(write(conn, "pong", 4) == 4, "%s server replies", what);
    CHECK(shutdown(conn, SHUT_WR) == 0, "%s shutdown SHUT_WR", what);
    memset(buf, 0, sizeof buf);
    got = 0;
    for (;;) {
        ssize_t r = read(cli, buf + got, sizeof buf - got);
        if (r <= 0)
            break;
        got += r;
    }
    say("%s client read: %.*s then EOF", what, (int)got, buf);
    close(cli);
    close(conn);
    close(srv);
}

static void dgram(int family, const char *what)
{
    struct sockaddr_storage addr;
    socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)&addr;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (void *)&addr;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    }
    int a = socket(family, SOCK_DGRAM, 0), b = socket(family, SOCK_DGRAM, 0);
    CHECK(bind(a, (void *)&addr, len) == 0 && bind(b, (void *)&addr, len) == 0, "%s UDP bind both", what);
    struct sockaddr_storage aa, ba, from;
    socklen_t al = sizeof aa, bl = sizeof ba, fl = sizeof from;
    getsockname(a, (void *)&aa, &al);
    getsockname(b, (void *)&ba, &bl);
    CHECK(sendto(a, "datagram", 8, 0, (void *)&ba, bl) == 8, "%s sendto", what);
    char buf[64] = {0};
    CHECK(recvfrom(b, buf, sizeof buf, 0, (void *)&from, &fl) == 8, "%s recvfrom", what);
    CHECK(fl == al && memcmp(&from, &aa, al) == 0, "%s recvfrom reports the sender's address", what);
    say("%s UDP got: %s", what, buf);
    close(a);
    close(b);
}

int main(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair AF_UNIX SOCK_STREAM");
    CHECK(write(sv[0], "hello", 5) == 5, "write on one end");
    char buf[128] = {0};
    CHECK(recv(sv[1], buf, sizeof buf, MSG_PEEK) == 5, "MSG_PEEK");
    CHECK(read(sv[1], buf, sizeof buf) == 5 && memcmp(buf, "hello", 5) == 0, "read on the other end");

    /* sendmsg with two iovecs + SCM_RIGHTS carrying a pipe's read end */
    int p[2];
    pipe(p);
    write(p[1], "through the passed fd", 21);
    struct iovec iov[2] = {{"two ", 4}, {"parts", 5}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &p[0], sizeof(int));
    CHECK(sendmsg(sv[0], &msg, 0) == 9, "sendmsg with SCM_RIGHTS");
    close(p[0]);

    char a[4] = {0}, b[16] = {0};
    struct iovec riov[2] = {{a, 4}, {b, sizeof b}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } rctl;
    struct msghdr rmsg = {.msg_iov = riov, .msg_iovlen = 2, .msg_control = rctl.buf, .msg_controllen = sizeof rctl.buf};
    CHECK(recvmsg(sv[1], &rmsg, 0) == 9, "recvmsg");
    say("recvmsg iovecs: [%.4s] [%.5s]", a, b);
    struct cmsghdr *rc = CMSG_FIRSTHDR(&rmsg);
    CHECK(rc && rc->cmsg_level == SOL_SOCKET && rc->cmsg_type == SCM_RIGHTS && rc->cmsg_len == CMSG_LEN(sizeof(int)),
          "SCM_RIGHTS control message received");
    int passed = -1;
    if (rc)
        memcpy(&passed, CMSG_DATA(rc), sizeof passed);
    memset(buf, 0, sizeof buf);
    CHECK(passed >= 0 && read(passed, buf, sizeof buf) == 21, "read through the passed fd");
    say("passed fd says: %s", buf);
    close(passed);
    close(p[1]);
    close(sv[0]);
    close(sv[1]);

    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair AF_UNIX SOCK_DGRAM");
    send(sv[0], "one", 3, 0);
    send(sv[0], "three", 5, 0);
    memset(buf, 0, sizeof buf);
    CHECK(recv(sv[1], buf, sizeof buf, 0) == 3, "datagram boundaries kept (1)");
    CHECK(recv(sv[1], buf, sizeof buf, 0) == 5, "datagram boundaries kept (2)");
    close(sv[0]);
    close(sv[1]);


    /* SCM_CREDENTIALS with SO_PASSCRED, MSG_CTRUNC, SO_RCVTIMEO, SO_LINGER, mmsg */
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair for credentials");
    int on = 1;
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0, "SO_PASSCRED");
    send(sv[0], "cred", 4, 0);
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } cctl;
    char cb[8];
    struct iovec civ = {cb, sizeof cb};
    struct msghdr cmsg = {.msg_iov = &civ, .msg_iovlen = 1, .msg_control = cctl.buf, .msg_controllen = sizeof cctl.buf};
    CHECK(recvmsg(sv[1], &cmsg, 0) == 4, "recvmsg with credentials");
    struct cmsghdr *cc = CMSG_FIRSTHDR(&cmsg);
    struct ucred uc = {0};
    if (cc && cc->cmsg_type == SCM_CREDENTIALS)
        memcpy(&uc, CMSG_DATA(cc), sizeof uc);
    say("SCM_CREDENTIALS: level-ok=%d pid-ok=%d uid-ok=%d len-ok=%d", cc && cc->cmsg_level == SOL_SOCKET,
        uc.pid == getpid(), uc.uid == getuid(), cc && cc->cmsg_len == CMSG_LEN(sizeof uc));
    /* a control buffer too small for two fds: MSG_CTRUNC, the fitting fd kept */
    int two[2];
    pipe(two);
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } sctl;
    memset(&sctl, 0, sizeof sctl);
    struct iovec siv = {"x", 1};
    struct msghdr smsg = {.msg_iov = &siv, .msg_iovlen = 1, .msg_control = sctl.buf, .msg_controllen = sizeof sctl.buf};
    struct cmsghdr *sc = CMSG_FIRSTHDR(&smsg);
    sc->cmsg_level = SOL_SOCKET;
    sc->cmsg_type = SCM_RIGHTS;
    sc->cmsg_len = CMSG_LEN(2 * sizeof(int));
    memcpy(CMSG_DATA(sc), two, sizeof two);
    int on0 = 0;
    setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on0, sizeof on0);
    CHECK(sendmsg(sv[0], &smsg, 0) == 1, "sendmsg two fds");
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } small;
    struct msghdr tmsg = {.msg_iov = &civ, .msg_iovlen = 1, .msg_control = small.buf, .msg_controllen = CMSG_LEN(sizeof(int))};
    CHECK(recvmsg(sv[1], &tmsg, 0) == 1, "recvmsg into a small control buffer");
    struct cmsghdr *tc = CMSG_FIRSTHDR(&tmsg);
    /* Linux sets MSG_CTRUNC here; qemu-user 7.2 loses the flag, so it is not printed */
    say("small control buffer: one fd delivered: %d",
        tc && tc->cmsg_type == SCM_RIGHTS && tc->cmsg_len == CMSG_LEN(sizeof(int)));
    close(two[0]);
    close(two[1]);
    struct timeval rto = {0, 50000}, rback = {0, 0};
    socklen_t rl = sizeof rback;
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof rto) == 0, "SO_RCVTIMEO 50 ms");
    CHECK(getsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &rback, &rl) == 0 && rl == sizeof rback && rback.tv_sec == 0 &&
          rback.tv_usec >= 40000 && rback.tv_usec <= 60000, "SO_RCVTIMEO reads back");
    CHECK_ERR(recv(sv[1], cb, sizeof cb, 0), EAGAIN, "recv times out: EAGAIN");
    struct linger lg = {1, 3}, lgb = {0, 0};
    socklen_t ll = sizeof lgb;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0 &&
          getsockopt(sv[0], SOL_SOCKET, SO_LINGER, &lgb, &ll) == 0 && lgb.l_onoff && lgb.l_linger == 3, "SO_LINGER");
    struct mmsghdr mm[3];
    struct iovec miov[3] = {{"m1", 2}, {"mm2", 3}, {"mmm3", 4}};
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) {
        mm[i].msg_hdr.msg_iov = &miov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    CHECK(sendmmsg(sv[0], mm, 3, 0) == 3 && mm[2].msg_len == 4, "sendmmsg 3 datagrams");
    char rb[3][8];
    struct iovec riov3[3] = {{rb[0], 8}, {rb[1], 8}, {rb[2], 8}};
    struct mmsghdr rm[3];
    memset(rm, 0, sizeof rm);
    for (int i = 0; i < 3; i++) {
        rm[i].msg_hdr.msg_iov = &riov3[i];
        rm[i].msg_hdr.msg_iovlen = 1;
    }
    CHECK(recvmmsg(sv[1], rm, 3, 0, NULL) == 3, "recvmmsg 3 datagrams");
    say("recvmmsg lengths: %u %u %u", rm[0].msg_len, rm[1].msg_len, rm[2].msg_len);
    close(sv[0]);
    close(sv[1]);

    /* AF_UNIX stream bound to a path */
    char dir[] = "/tmp/pyqemu-sock.XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s/s", dir);
    int srv = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(bind(srv, (void *)&un, sizeof un) == 0, "bind AF_UNIX path");
    struct stat st;
    CHECK(stat(un.sun_path, &st) == 0 && S_ISSOCK(st.st_mode), "the path is a socket");
    CHECK(listen(srv, 1) == 0, "listen AF_UNIX");
    int cli = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(cli, (void *)&un, sizeof un) == 0, "connect AF_UNIX");
    int conn = accept(srv, NULL, NULL);
    CHECK(conn >= 0, "accept AF_UNIX");
    struct sockaddr_un got;
    socklen_t gl = sizeof got;
    CHECK(getsockname(srv, (void *)&got, &gl) == 0 && strcmp(got.sun_path, un.sun_path) == 0,
          "getsockname gives the bound path");
    say("unix getsockname: family-ok=%d name=%s", got.sun_family == AF_UNIX, base_name(got.sun_path));
    gl = sizeof got;
    CHECK(getpeername(cli, (void *)&got, &gl) == 0 && strcmp(got.sun_path, un.sun_path) == 0,
          "getpeername gives the bound path");
    struct ucred cred;
    socklen_t cl = sizeof cred;
    CHECK(getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.pid == getpid() && cred.uid == getuid(),
          "SO_PEERCRED is us");
    send(cli, "unix", 4, 0);
    memset(buf, 0, sizeof buf);
    CHECK(recv(conn, buf, sizeof buf, 0) == 4, "unix stream recv");
    say("unix stream got: %s", buf);
    close(cli);
    close(conn);
    close(srv);
    unlink(un.sun_path);
    rmdir(dir);
    int bad = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un none = {.sun_family = AF_UNIX, .sun_path = "/nonexistent/pyqemu.sock"};
    CHECK_ERR(connect(bad, (void *)&none, sizeof none), ENOENT, "connect to a missing path: ENOENT");
    close(bad);
    CHECK_ERR(socket(12345, SOCK_STREAM, 0), EAFNOSUPPORT, "socket of an unknown family: EAFNOSUPPORT");
    CHECK_ERR(getsockname(0 + 1000, (void *)&got, &gl), EBADF, "getsockname on a bad fd: EBADF");

    stream_echo(AF_INET, "inet");
    stream_echo(AF_INET6, "inet6");
    dgram(AF_INET, "inet");
    dgram(AF_INET6, "inet6");
    return guest_done();
}
