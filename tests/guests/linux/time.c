/* Time: clock_gettime (monotonic never goes back, realtime is plausible),
 * clock_getres, gettimeofday, time, nanosleep, clock_nanosleep (relative and
 * absolute), timerfd (one-shot and periodic), times.
 */
#include <stdint.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/times.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static int64_t ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

int main(void)
{
    struct timespec a, b, r;
    CHECK(clock_gettime(CLOCK_MONOTONIC, &a) == 0, "clock_gettime CLOCK_MONOTONIC");
    int back = 0;
    for (int i = 0; i < 1000; i++) {
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (ns(&b) < ns(&a))
            back++;
        a = b;
    }
    CHECK(back == 0, "monotonic clock never goes back over 1000 reads");
    CHECK(clock_gettime(CLOCK_REALTIME, &a) == 0 && a.tv_sec > 1600000000, "realtime is after 2020");
    CHECK(a.tv_nsec >= 0 && a.tv_nsec < 1000000000, "tv_nsec in range");
    CHECK(clock_gettime(CLOCK_BOOTTIME, &a) == 0 && a.tv_sec >= 0, "clock_gettime CLOCK_BOOTTIME");
    CHECK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a) == 0, "clock_gettime CLOCK_PROCESS_CPUTIME_ID");
    CHECK(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a) == 0, "clock_gettime CLOCK_THREAD_CPUTIME_ID");
    CHECK_ERR(clock_gettime((clockid_t)1234, &a), EINVAL, "clock_gettime of a bad clock: EINVAL");
    CHECK(clock_getres(CLOCK_MONOTONIC, &r) == 0 && r.tv_sec == 0 && r.tv_nsec > 0 && r.tv_nsec <= 1000000,
          "clock_getres CLOCK_MONOTONIC is at most 1 ms");

    struct timeval tv;
    CHECK(gettimeofday(&tv, NULL) == 0 && tv.tv_sec > 1600000000 && tv.tv_usec < 1000000, "gettimeofday");
    time_t t = time(NULL);
    CHECK(t > 1600000000 && t - tv.tv_sec < 100, "time agrees with gettimeofday");

    struct timespec req = {0, 20 * 1000000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK(nanosleep(&req, NULL) == 0, "nanosleep 20 ms");
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK(ns(&b) - ns(&a) >= 20000000, "nanosleep slept at least 20 ms");
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL) == 0, "clock_nanosleep relative");
    clock_gettime(CLOCK_MONOTONIC, &a);
    struct timespec until = a;
    until.tv_nsec += 10000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == 0, "clock_nanosleep TIMER_ABSTIME");
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK(ns(&b) >= ns(&until), "woke up after the absolute deadline");
    struct timespec badreq = {0, 1000000000};
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &badreq, NULL) == EINVAL, "clock_nanosleep with tv_nsec=1e9: EINVAL");
    CHECK_ERR(nanosleep(&badreq, NULL), EINVAL, "nanosleep with tv_nsec=1e9: EINVAL");

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    CHECK(tfd >= 0, "timerfd_create");
    struct itimerspec its = {{0, 0}, {0, 10000000}};
    CHECK(timerfd_settime(tfd, 0, &its, NULL) == 0, "timerfd_settime one-shot 10 ms");
    uint64_t exp = 0;
    CHECK(read(tfd, &exp, sizeof exp) == sizeof exp, "read the timerfd");
    say("one-shot expirations: %llu", (unsigned long long)exp);
    struct itimerspec cur;
    CHECK(timerfd_gettime(tfd, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0,
          "disarmed after firing");
    its.it_interval.tv_nsec = 5000000;
    its.it_value.tv_nsec = 5000000;
    CHECK(timerfd_settime(tfd, 0, &its, NULL) == 0, "timerfd_settime periodic 5 ms");
    /* sleep past three expirations, then one read collects them all: the number of
     * read() calls is fixed, so -strace output does not depend on timing */
    struct timespec past3 = {0, 20 * 1000000};
    CHECK(nanosleep(&past3, NULL) == 0, "nanosleep past three periods");
    exp = 0;
    CHECK(read(tfd, &exp, sizeof exp) == sizeof exp && exp >= 3,
          "periodic timer fired at least 3 times");
    CHECK(timerfd_gettime(tfd, &cur) == 0 && cur.it_interval.tv_nsec == 5000000, "timerfd_gettime interval");
    close(tfd);
    int nb = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    CHECK_ERR(read(nb, &exp, sizeof exp), EAGAIN, "unarmed non-blocking timerfd: EAGAIN");
    close(nb);

    struct tms tm;
    CHECK(times(&tm) != (clock_t)-1, "times");
    CHECK(sysconf(_SC_CLK_TCK) == 100, "CLK_TCK is 100");
    return guest_done();
}
