/* Sizes and offsets of the structs the I/O, socket and file syscalls translate, as
 * the guest's own headers lay them out (tests/linux_user/test_io_layouts.py compares
 * them with linux_user/syscalls' struct.Struct layouts). Output is "name value".
 */
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <termios.h>
#include "guest.h"

#define SZ(t) say("sizeof " #t " %zu", sizeof(t))
#define OFF(t, f) say("offsetof " #t "." #f " %zu", offsetof(t, f))

int main(void)
{
    SZ(struct pollfd);
    SZ(struct epoll_event);
    OFF(struct epoll_event, data);
    SZ(fd_set);
    SZ(struct signalfd_siginfo);
    OFF(struct signalfd_siginfo, ssi_ptr);
    OFF(struct signalfd_siginfo, ssi_addr);
    SZ(struct msghdr);
    OFF(struct msghdr, msg_iov);
    OFF(struct msghdr, msg_control);
    OFF(struct msghdr, msg_flags);
    SZ(struct cmsghdr);
    SZ(struct mmsghdr);
    SZ(struct iovec);
    SZ(struct sockaddr_un);
    SZ(struct sockaddr_in);
    SZ(struct sockaddr_in6);
    SZ(struct sockaddr_storage);
    SZ(struct linger);
    SZ(struct ucred);
    SZ(struct flock);
    OFF(struct flock, l_start);
    OFF(struct flock, l_pid);
    SZ(struct flock64);
    OFF(struct flock64, l_start);
    OFF(struct flock64, l_pid);
    SZ(struct statfs);
    OFF(struct statfs, f_blocks);
    OFF(struct statfs, f_fsid);
    SZ(struct statfs64);
    SZ(struct itimerspec);
    say("F_GETLK %d F_GETLK64 %d F_OFD_GETLK %d F_SETOWN_EX %d", F_GETLK, F_GETLK64, F_OFD_GETLK, F_SETOWN_EX);
    say("SOL_SOCKET %d SO_RCVTIMEO %d SO_PASSCRED %d SO_PEERCRED %d SCM_RIGHTS %d SCM_CREDENTIALS %d",
        SOL_SOCKET, SO_RCVTIMEO, SO_PASSCRED, SO_PEERCRED, SCM_RIGHTS, SCM_CREDENTIALS);
    say("SOCK_NONBLOCK %#o SOCK_CLOEXEC %#o EPOLLET %#x EFD_NONBLOCK %#o", SOCK_NONBLOCK, SOCK_CLOEXEC,
        (unsigned)EPOLLET, EFD_NONBLOCK);
    say("TCGETS %#x TIOCGWINSZ %#x FIONBIO %#x TIOCGPTN %#x", TCGETS, TIOCGWINSZ, FIONBIO, (unsigned)TIOCGPTN);
    return 0;
}
