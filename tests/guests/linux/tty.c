/* Terminals: isatty and TCGETS on a pipe and /dev/null (ENOTTY), then a
 * pseudo-terminal: grantpt/unlockpt, tcgetattr/tcsetattr, raw mode, window
 * size, data both ways, TIOCGPTN, FIONREAD.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>
#include "guest.h"

int main(void)
{
    int p[2];
    pipe(p);
    CHECK_ERR(isatty(p[0]) ? 0 : -1, ENOTTY, "isatty on a pipe: 0, ENOTTY");
    struct termios t;
    CHECK_ERR(ioctl(p[0], TCGETS, &t), ENOTTY, "TCGETS on a pipe: ENOTTY");
    CHECK_ERR(tcgetattr(p[1], &t), ENOTTY, "tcgetattr on a pipe: ENOTTY");
    int nul = open("/dev/null", O_RDWR);
    CHECK_ERR(isatty(nul) ? 0 : -1, ENOTTY, "isatty on /dev/null: 0, ENOTTY");
    struct winsize ws;
    CHECK_ERR(ioctl(nul, TIOCGWINSZ, &ws), ENOTTY, "TIOCGWINSZ on /dev/null: ENOTTY");
    CHECK(write(p[1], "abcde", 5) == 5, "fill the pipe");
    int avail = -1;
    CHECK(ioctl(p[0], FIONREAD, &avail) == 0, "FIONREAD on a pipe");
    say("FIONREAD: %d", avail);

    int m = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(m >= 0, "posix_openpt");
    CHECK(grantpt(m) == 0 && unlockpt(m) == 0, "grantpt + unlockpt");
    unsigned ptn = 9999;
    CHECK(ioctl(m, TIOCGPTN, &ptn) == 0 && ptn != 9999, "TIOCGPTN");
    char *name = ptsname(m);
    CHECK(name && strncmp(name, "/dev/pts/", 9) == 0, "ptsname is under /dev/pts");
    int s = open(name, O_RDWR | O_NOCTTY);
    CHECK(s >= 0, "open the slave");
    say("isatty: master=%d slave=%d", isatty(m), isatty(s));
    CHECK(tcgetattr(s, &t) == 0, "tcgetattr on the slave");
    say("default: ICANON=%d ECHO=%d ISIG=%d ICRNL=%d OPOST=%d", !!(t.c_lflag & ICANON), !!(t.c_lflag & ECHO),
        !!(t.c_lflag & ISIG), !!(t.c_iflag & ICRNL), !!(t.c_oflag & OPOST));
    cfmakeraw(&t);
    CHECK(cfsetospeed(&t, B38400) == 0 && cfsetispeed(&t, B38400) == 0, "cfset*speed");
    CHECK(tcsetattr(s, TCSANOW, &t) == 0, "tcsetattr raw");
    struct termios back;
    CHECK(tcgetattr(s, &back) == 0, "tcgetattr again");
    say("raw: ICANON=%d ECHO=%d ISIG=%d OPOST=%d ospeed=%d", !!(back.c_lflag & ICANON), !!(back.c_lflag & ECHO),
        !!(back.c_lflag & ISIG), !!(back.c_oflag & OPOST), cfgetospeed(&back) == B38400);

    struct winsize set = {.ws_row = 24, .ws_col = 80, .ws_xpixel = 0, .ws_ypixel = 0};
    CHECK(ioctl(m, TIOCSWINSZ, &set) == 0, "TIOCSWINSZ on the master");
    memset(&ws, 0, sizeof ws);
    CHECK(ioctl(s, TIOCGWINSZ, &ws) == 0, "TIOCGWINSZ on the slave");
    say("window size: %ux%u", ws.ws_col, ws.ws_row);

    CHECK(write(m, "to-slave", 8) == 8, "write to the master");
    char buf[64] = {0};
    CHECK(read(s, buf, sizeof buf) == 8, "read on the slave");
    say("slave read: %s", buf);
    CHECK(write(s, "to-master", 9) == 9, "write to the slave");
    memset(buf, 0, sizeof buf);
    CHECK(read(m, buf, sizeof buf) == 9, "read on the master");
    say("master read: %s", buf);
    CHECK(tcflush(s, TCIOFLUSH) == 0, "tcflush");
    CHECK(tcdrain(s) == 0, "tcdrain");
    pid_t pg = -1;
    CHECK_ERR(ioctl(s, TIOCGPGRP, &pg), ENOTTY, "TIOCGPGRP without a controlling tty: ENOTTY");
    close(s);
    close(m);
    return guest_done();
}
