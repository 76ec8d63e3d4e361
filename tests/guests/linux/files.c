/* Files and directories: open/read/write/lseek/pread/pwrite, the *at family,
 * stat/fstat/lstat/fstatat/statx, getdents64, readlink, rename, link, unlink,
 * mkdir/rmdir, symlink, truncate, umask, utimensat, errors. Works in a fresh
 * directory under $TMPDIR (or /tmp) and removes it; prints no host paths.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_dir(int dfd, const char *what)
{
    char buf[4096];
    char *names[64];
    int n = 0;
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0, "openat . O_DIRECTORY");
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (got <= 0) {
            CHECK(got == 0, "getdents64 ends with 0");
            break;
        }
        for (long off = 0; off < got;) {
            struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d =
                (void *)(buf + off);
            if (n < 64)
                names[n++] = strdup(d->name);
            off += d->reclen;
        }
    }
    close(fd);
    qsort(names, n, sizeof names[0], cmp);
    printf("%s:", what);
    for (int i = 0; i < n; i++) {
        printf(" %s", names[i]);
        free(names[i]);
    }
    say("");
}

int main(void)
{
    char tmpl[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpl, sizeof tmpl, "%s/pyqemu-files.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    CHECK(mkdtemp(tmpl) != NULL, "mkdtemp");
    int dfd = open(tmpl, O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0, "open the directory");

    mode_t old = umask(022);
    CHECK(umask(022) == 022, "umask returns the previous mask");
    (void)old;

    int fd = openat(dfd, "a", O_CREAT | O_EXCL | O_RDWR, 0666);
    CHECK(fd >= 0, "openat O_CREAT|O_EXCL");
    CHECK_ERR(openat(dfd, "a", O_CREAT | O_EXCL | O_RDWR, 0666), EEXIST, "O_EXCL on an existing file: EEXIST");
    CHECK(write(fd, "hello world\n", 12) == 12, "write 12 bytes");
    CHECK(lseek(fd, 0, SEEK_CUR) == 12, "lseek SEEK_CUR after write is 12");
    CHECK(lseek(fd, 6, SEEK_SET) == 6, "lseek SEEK_SET 6");
    char buf[64] = {0};
    CHECK(read(fd, buf, 5) == 5 && memcmp(buf, "world", 5) == 0, "read 5 at 6 gives 'world'");
    CHECK(pread(fd, buf, 5, 0) == 5 && memcmp(buf, "hello", 5) == 0, "pread at 0 gives 'hello'");
    CHECK(lseek(fd, 0, SEEK_CUR) == 11, "pread does not move the offset");
    CHECK(pwrite(fd, "HELLO", 5, 0) == 5, "pwrite at 0");
    CHECK(lseek(fd, 0, SEEK_END) == 12, "lseek SEEK_END is the size");
    CHECK(lseek(fd, -3, SEEK_END) == 9, "lseek -3 from SEEK_END");
    CHECK_ERR(lseek(fd, -100, SEEK_SET), EINVAL, "lseek to a negative offset: EINVAL");
    memset(buf, 0, sizeof buf);
    CHECK(pread(fd, buf, 64, 0) == 12, "pread past the end is short");
    say("content: %.11s", buf);
    CHECK(lseek(fd, 1000, SEEK_SET) == 1000 && write(fd, "x", 1) == 1, "write after a hole");

    struct stat st;
    CHECK(fstat(fd, &st) == 0, "fstat");
    say("fstat size=%lld mode=%o nlink=%lu reg=%d blksize>0=%d", (long long)st.st_size,
        (unsigned)(st.st_mode & 07777), (unsigned long)st.st_nlink, S_ISREG(st.st_mode), st.st_blksize > 0);
    CHECK(st.st_uid == getuid() && st.st_gid == getgid(), "fstat uid/gid are ours");
    CHECK(ftruncate(fd, 3) == 0, "ftruncate to 3");
    CHECK(fstat(fd, &st) == 0 && st.st_size == 3, "size is 3 after ftruncate");
    close(fd);

    char path[4200];
    snprintf(path, sizeof path, "%s/a", tmpl);
    CHECK(truncate(path, 100) == 0, "truncate to 100");
    CHECK(stat(path, &st) == 0 && st.st_size == 100, "stat size is 100");
    fd = open(path, O_RDONLY);
    CHECK(pread(fd, buf, 4, 50) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0, "grown part reads zeroes");
    CHECK_ERR(write(fd, "x", 1), EBADF, "write on O_RDONLY: EBADF");
    close(fd);
    CHECK_ERR(read(fd, buf, 1), EBADF, "read on a closed fd: EBADF");

    CHECK(symlinkat("a", dfd, "link") == 0, "symlinkat");
    memset(buf, 0, sizeof buf);
    CHECK(readlinkat(dfd, "link", buf, sizeof buf) == 1 && buf[0] == 'a', "readlinkat gives 'a'");
    char lpath[4200];
    snprintf(lpath, sizeof lpath, "%s/link", tmpl);
    memset(buf, 0, sizeof buf);
    CHECK(readlink(lpath, buf, sizeof buf) == 1 && buf[0] == 'a', "readlink gives 'a'");
    CHECK(lstat(lpath, &st) == 0 && S_ISLNK(st.st_mode) && st.st_size == 1, "lstat sees a symlink of size 1");
    CHECK(stat(lpath, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 100, "stat follows the symlink");
    CHECK(fstatat(dfd, "link", &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode), "fstatat AT_SYMLINK_NOFOLLOW");
    CHECK_ERR(readlinkat(dfd, "a", buf, sizeof buf), EINVAL, "readlink of a regular file: EINVAL");

    struct statx sx;
    CHECK(statx(dfd, "a", 0, STATX_BASIC_STATS, &sx) == 0, "statx");
    say("statx size=%llu mode=%o type-reg=%d nlink=%u basic=%d", (unsigned long long)sx.stx_size,
        (unsigned)(sx.stx_mode & 07777), S_ISREG(sx.stx_mode), sx.stx_nlink,
        (sx.stx_mask & STATX_BASIC_STATS) == STATX_BASIC_STATS);

    CHECK(linkat(dfd, "a", dfd, "hard", 0) == 0, "linkat");
    CHECK(fstatat(dfd, "a", &st, 0) == 0 && st.st_nlink == 2, "nlink is 2 after link");
    CHECK(renameat(dfd, "hard", dfd, "b") == 0, "renameat");
    CHECK_ERR(faccessat(dfd, "hard", F_OK, 0), ENOENT, "old name is gone: ENOENT");
    CHECK(faccessat(dfd, "b", R_OK | W_OK, 0) == 0, "faccessat R_OK|W_OK");
    CHECK(fchmodat(dfd, "b", 0600, 0) == 0, "fchmodat 0600");
    CHECK(fstatat(dfd, "a", &st, 0) == 0 && (st.st_mode & 0777) == 0600, "mode is shared by the hard link");

    struct timespec times[2] = {{1000000000, 0}, {1234567890, 500}};
    CHECK(utimensat(dfd, "b", times, 0) == 0, "utimensat");
    CHECK(fstatat(dfd, "b", &st, 0) == 0, "fstatat after utimensat");
    say("atime=%lld mtime=%lld mtime_nsec=%ld", (long long)st.st_atim.tv_sec, (long long)st.st_mtim.tv_sec,
        (long)st.st_mtim.tv_nsec);

    CHECK(mkdirat(dfd, "sub", 0755) == 0, "mkdirat");
    CHECK_ERR(mkdirat(dfd, "sub", 0755), EEXIST, "mkdirat again: EEXIST");
    CHECK(fstatat(dfd, "sub", &st, 0) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0755, "sub is a 0755 directory");
    fd = openat(dfd, "sub/f", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0, "create sub/f");
    close(fd);
    CHECK_ERR(unlinkat(dfd, "sub", AT_REMOVEDIR), ENOTEMPTY, "rmdir of a non-empty directory: ENOTEMPTY");
    CHECK_ERR(openat(dfd, "sub/f/x", O_RDONLY), ENOTDIR, "path through a file: ENOTDIR");
    CHECK_ERR(openat(dfd, "missing", O_RDONLY), ENOENT, "open a missing file: ENOENT");
    CHECK_ERR(open("pyqemu-files-no-such-sub", O_WRONLY), ENOENT, "relative open in the old cwd: ENOENT");
    list_dir(dfd, "entries");

    char cwd[4096];
    int here = open(".", O_RDONLY | O_DIRECTORY);
    CHECK(chdir(tmpl) == 0, "chdir");
    CHECK(getcwd(cwd, sizeof cwd) != NULL && strcmp(base_name(cwd), base_name(tmpl)) == 0, "getcwd names the directory");
    CHECK(access("sub/f", F_OK) == 0, "relative path after chdir");
    CHECK(rename("sub/f", "g") == 0, "rename across directories");
    CHECK(rmdir("sub") == 0, "rmdir");
    CHECK(mkdir("d2", 0700) == 0 && rmdir("d2") == 0, "mkdir+rmdir");
    list_dir(AT_FDCWD, "entries after rename");
    CHECK(fchdir(here) == 0, "fchdir back");
    close(here);

    CHECK(unlinkat(dfd, "g", 0) == 0, "unlinkat g");
    CHECK(unlinkat(dfd, "link", 0) == 0, "unlinkat link");
    CHECK(unlink(path) == 0, "unlink a");
    CHECK(unlinkat(dfd, "b", 0) == 0, "unlinkat b");
    CHECK_ERR(unlinkat(dfd, "b", 0), ENOENT, "unlink again: ENOENT");

    /* file systems, space, copies between fds */
    struct statfs sf, fsf;
    int cf = open("pyqemu-files-copy-src", O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(cf >= 0, "create a copy source");
    CHECK(statfs(".", &sf) == 0 && fstatfs(cf, &fsf) == 0, "statfs and fstatfs");
    say("statfs agrees with fstatfs: type=%d bsize=%d namelen=%ld", sf.f_type == fsf.f_type,
        sf.f_bsize == fsf.f_bsize && sf.f_bsize > 0, (long)sf.f_namelen);
    CHECK_ERR(statfs("pyqemu-no-such-dir/x", &sf), ENOENT, "statfs of a missing path: ENOENT");
    CHECK(fallocate(cf, 0, 0, 8192) == 0, "fallocate 8 KiB");
    struct stat cst;
    fstat(cf, &cst);
    say("size after fallocate: %lld", (long long)cst.st_size);
    CHECK(fallocate(cf, FALLOC_FL_KEEP_SIZE, 8192, 4096) == 0 && fstat(cf, &cst) == 0 && cst.st_size == 8192,
          "FALLOC_FL_KEEP_SIZE keeps the size");
    CHECK(pwrite(cf, "copy me, please", 15, 100) == 15, "pwrite the payload");
    CHECK(sync_file_range(cf, 0, 0, SYNC_FILE_RANGE_WRITE) == 0, "sync_file_range");
    CHECK(posix_fadvise(cf, 0, 0, POSIX_FADV_SEQUENTIAL) == 0, "posix_fadvise");
    CHECK(fdatasync(cf) == 0 && syncfs(cf) == 0, "fdatasync + syncfs");
    int pp[2];
    pipe(pp);
    off_t off = 100;
    CHECK(sendfile(pp[1], cf, &off, 8) == 8 && off == 108, "sendfile with an offset advances it");
    char sbuf[32] = {0};
    CHECK(read(pp[0], sbuf, sizeof sbuf) == 8, "read what sendfile sent");
    say("sendfile sent: %s", sbuf);
    int dst = open("pyqemu-files-copy-dst", O_RDWR | O_CREAT | O_TRUNC, 0600);
    loff_t in_off = 109, out_off = 4;
    CHECK(copy_file_range(cf, &in_off, dst, &out_off, 6, 0) == 6 && in_off == 115 && out_off == 10,
          "copy_file_range with offsets");
    memset(sbuf, 0, sizeof sbuf);
    CHECK(pread(dst, sbuf, sizeof sbuf, 4) == 6, "read the copy");
    say("copy_file_range copied: %s", sbuf);
    loff_t soff = 100;
    CHECK(splice(cf, &soff, pp[1], NULL, 4, 0) == 4 && soff == 104, "splice file -> pipe");
    int pq[2];
    pipe(pq);
    CHECK(tee(pp[0], pq[1], 4, 0) == 4, "tee pipe -> pipe");
    memset(sbuf, 0, sizeof sbuf);
    CHECK(read(pq[0], sbuf, 4) == 4 && read(pp[0], sbuf + 4, 4) == 4, "both pipes hold the data");
    say("splice+tee: %s", sbuf);
    close(pp[0]);
    close(pp[1]);
    close(pq[0]);
    close(pq[1]);
    CHECK_ERR(renameat2(AT_FDCWD, "pyqemu-files-copy-src", AT_FDCWD, "pyqemu-files-copy-dst", RENAME_NOREPLACE),
              EEXIST, "renameat2 RENAME_NOREPLACE onto a file: EEXIST");
    CHECK(renameat2(AT_FDCWD, "pyqemu-files-copy-src", AT_FDCWD, "pyqemu-files-copy-dst", RENAME_EXCHANGE) == 0,
          "renameat2 RENAME_EXCHANGE");
    struct stat xst;
    CHECK(stat("pyqemu-files-copy-dst", &xst) == 0 && xst.st_size == 8192, "exchanged: the big file is dst now");
    CHECK(ftruncate(dst, 3) == 0 && fstat(dst, &xst) == 0 && xst.st_size == 3, "ftruncate to 3");
    struct stat64 bst;
    CHECK(truncate64("pyqemu-files-copy-dst", 5000000000LL) == 0 && stat64("pyqemu-files-copy-dst", &bst) == 0 &&
          bst.st_size == 5000000000LL, "truncate64 past 4 GiB");
    CHECK(ftruncate64(dst, 4294967297LL) == 0 && fstat64(dst, &bst) == 0 && bst.st_size == 4294967297LL,
          "ftruncate64 past 4 GiB");
    mode_t old_mask = umask(027);
    say("umask: old=%03o now=%03o", old_mask, umask(old_mask));
    close(cf);
    close(dst);
    unlink("pyqemu-files-copy-src");
    unlink("pyqemu-files-copy-dst");

    list_dir(dfd, "entries at the end");
    close(dfd);
    CHECK(rmdir(tmpl) == 0, "remove the directory");
    return guest_done();
}
