/* Shared helpers of the guest programs: deterministic "ok"/"FAIL" lines.
 *
 * CHECK(cond, "what", ...) prints "ok: what" or "FAIL: what (errno NAME)";
 * guest_done() prints "failures: N" and gives the exit status (0 when none
 * failed). stdout is flushed after every line so fork()ed children and
 * signal handlers never reorder or duplicate output.
 */
#ifndef PYQEMU_GUEST_H
#define PYQEMU_GUEST_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int guest_failures;

__attribute__((unused)) static const char *errname(int e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EPIPE: return "EPIPE";
    case ERANGE: return "ERANGE";
    case ENOSYS: return "ENOSYS";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ELOOP: return "ELOOP";
    case ENOEXEC: return "ENOEXEC";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EADDRINUSE: return "EADDRINUSE";
    case ENOTCONN: return "ENOTCONN";
    case ENOTSOCK: return "ENOTSOCK";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    default: return "E?";
    }
}

__attribute__((unused)) static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

__attribute__((unused)) static void check_(int ok, int err, const char *fmt, ...)
{
    va_list ap;
    fputs(ok ? "ok: " : "FAIL: ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (!ok) {
        printf(" (errno %s)", errname(err));
        guest_failures++;
    }
    putchar('\n');
    fflush(stdout);
}

#define CHECK(cond, ...) do { errno = 0; int c_ok_ = !!(cond); check_(c_ok_, errno, __VA_ARGS__); } while (0)

/* CHECK_ERR(call, ERRNO, "what"): the call must fail (-1) with errno ERRNO. */
#define CHECK_ERR(call, err, ...) do { errno = 0; long c_r_ = (long)(call); int c_e_ = errno; \
    check_(c_r_ == -1 && c_e_ == (err), c_e_, __VA_ARGS__); } while (0)

__attribute__((unused)) static int guest_done(void)
{
    say("failures: %d", guest_failures);
    return guest_failures ? 1 : 0;
}

__attribute__((unused)) static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

#endif
