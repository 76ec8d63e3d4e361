"""The guest struct layouts and constants of syscalls/poll.py, net.py and files.py equal
what the cross toolchains' own headers say: tests/guests/linux/io_layouts.c prints
sizeof/offsetof and constants for arm and aarch64 (run under qemu-user, and under
pyqemu with the same output)."""

from __future__ import annotations

import struct
import types

import pytest
from pyqemu.common.cpu import get_arch
from pyqemu.linux_user.syscalls import files, net, poll
from pyqemu.linux_user.syscalls.structs import timespec_struct


def _layout(guest, assert_same_as_qemu, arch: str) -> dict[str, int]:
    _, ours = assert_same_as_qemu(arch, guest("io_layouts", arch, static=True))
    out: dict[str, int] = {}
    for line in ours.lines():
        words = line.split()
        if words[0] in ("sizeof", "offsetof"):
            out[" ".join(words[:-1])] = int(words[-1])
        else:
            for name, value in zip(words[::2], words[1::2], strict=True):
                octal = value.startswith("0") and not value.startswith("0x") and value != "0"
                out[name] = int(value, 8 if octal else 0)
    return out


def _off(fmt: str) -> int:
    return struct.calcsize(fmt)


@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_layouts_match_the_guest_headers(guest, assert_same_as_qemu, arch: str) -> None:
    c = _layout(guest, assert_same_as_qemu, arch)
    word = get_arch(arch).word_size
    t = types.SimpleNamespace(arch=get_arch(arch))
    # poll.py
    assert c["sizeof struct pollfd"] == 8
    assert c["sizeof struct epoll_event"] == poll.EPOLL_EVENT_GUEST.size == 16
    assert c["offsetof struct epoll_event.data"] == _off("<I4x")
    assert c["sizeof struct signalfd_siginfo"] == poll.SIGNALFD_SIGINFO.size
    assert c["offsetof struct signalfd_siginfo.ssi_ptr"] == _off("<IiiIIiIIIIii")
    assert c["offsetof struct signalfd_siginfo.ssi_addr"] == _off("<IiiIIiIIIIiiQQQ")
    assert c["sizeof struct itimerspec"] == 2 * timespec_struct(t).size
    assert c["EPOLLET"] == 1 << 31 and c["EFD_NONBLOCK"] == 0o4000
    # net.py
    lay = net._LAYOUTS[word]
    assert c["sizeof struct msghdr"] == lay.msghdr.size
    assert c["sizeof struct cmsghdr"] == lay.cmsg.size
    assert c["sizeof struct iovec"] == lay.iovec.size
    msg_fmt = lay.msghdr.format
    assert c["offsetof struct msghdr.msg_iov"] == _off(msg_fmt[:3 if word == 4 else 5])
    assert c["offsetof struct msghdr.msg_flags"] == _off(msg_fmt[:7 if word == 4 else 9])
    mmsg = lay.msghdr.size + 4
    assert c["sizeof struct mmsghdr"] == mmsg + (-mmsg % word)
    assert c["sizeof struct sockaddr_storage"] == net.SOCKADDR_MAX
    assert (c["SOL_SOCKET"], c["SCM_RIGHTS"], c["SCM_CREDENTIALS"]) == (
        net.SOL_SOCKET, net.SCM_RIGHTS, net.SCM_CREDENTIALS)
    assert c["SO_RCVTIMEO"] == net.SO_RCVTIMEO_OLD           # glibc 2.36 default (time32)
    assert c["SOCK_CLOEXEC"] == 0o2000000 and c["SOCK_NONBLOCK"] == 0o4000
    # files.py
    if arch == "arm":
        assert c["sizeof struct flock"] == files.FLOCK_ARM.size
        assert c["offsetof struct flock.l_start"] == _off("<hh")
        assert c["offsetof struct flock.l_pid"] == _off("<hhii")
        assert c["F_GETLK64"] == files.F_GETLK64
        assert c["sizeof struct statfs"] == files.STATFS_ARM.size
        assert c["offsetof struct statfs.f_fsid"] == _off("<IIIIIII")
        # glibc's statfs64 is 88 bytes, the kernel's (packed, aligned 4) 84
        assert c["sizeof struct statfs64"] == 88 and files.STATFS64_ARM.size == 84
    else:
        assert c["sizeof struct flock"] == files.FLOCK64.size
        assert c["sizeof struct statfs"] == files.STATFS_64.size
        assert c["offsetof struct statfs.f_fsid"] == _off("<qqQQQQQ")
    assert c["sizeof struct flock64"] == files.FLOCK64.size
    assert c["offsetof struct flock64.l_start"] == _off("<hh4x")
    assert c["offsetof struct flock64.l_pid"] == _off("<hh4xqq")
    assert (c["F_GETLK"], c["F_OFD_GETLK"], c["F_SETOWN_EX"]) == (
        files.F_GETLK, files.F_OFD_GETLK, files.F_SETOWN_EX)
    assert (c["TCGETS"], c["TIOCGWINSZ"], c["FIONBIO"], c["TIOCGPTN"]) == (
        files.TCGETS, files.TIOCGWINSZ, files.FIONBIO, files.TIOCGPTN)
