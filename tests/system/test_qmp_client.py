"""The qemu.qmp client library (PyPI) drives both emulators through -qmp with one script.

The Multiboot kernel of tests/guests/x86/mbkernel/ runs with "spin" on its
command line: after its checks it loops for ever in spin(), so a stop lands
there. The script: connect to a -S machine, query-status, cont, wait for the
kernel's "MBK spin" line, stop, human-monitor-command "info registers" (EIP
inside spin(), the kernel's CR0 and code selector, IF set), cont, quit.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from elftools.elf.elffile import ELFFile

from tests.system.conftest import RunningVM, qmp_connect, qmp_disconnect, qmp_wait_status


def symbol_range(elf_path: Path, name: str) -> range:
    """The address range of function ``name`` in the kernel's symbol table."""
    with elf_path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        (sym,) = symtab.get_symbol_by_name(name)
        return range(sym["st_value"], sym["st_value"] + sym["st_size"])


def register(text: str, name: str) -> int:
    """A register's value from HMP ``info registers`` text (``NAME=hex``)."""
    m = re.search(rf"(?:^|\s){name}=([0-9a-f]+)", text)
    assert m, f"no {name}= in:\n{text}"
    return int(m[1], 16)


async def qmp_script(vm: RunningVM, sock: Path, serial: Path, spin: range) -> list[dict]:
    from qemu.qmp import EventListener

    client = await qmp_connect(sock, vm)
    listener = EventListener(("STOP", "RESUME", "SHUTDOWN"))
    client.register_listener(listener)
    try:
        version = client.greeting.QMP.version["qemu"]
        assert version["major"] >= 7 and isinstance(version["minor"], int), version

        assert await client.execute("query-status") == {
            "status": "prelaunch",
            "running": False,
            "singlestep": False,
        }
        await client.execute("cont")
        vm.wait_for("the kernel's spin line", lambda: b"MBK spin\r\n" in serial.read_bytes())
        assert (await client.execute("query-status"))["running"] is True

        await client.execute("stop")
        assert await qmp_wait_status(client, vm, "paused") == {
            "status": "paused",
            "running": False,
            "singlestep": False,
        }
        hmp = {"command-line": "info registers"}
        regs = await client.execute("human-monitor-command", hmp)
        assert isinstance(regs, str)
        assert register(regs, "EIP") in spin, regs
        assert register(regs, "CR0") == 0x80010011, regs  # PG WP ET PE, as the kernel set
        assert re.search(r"^CS =0008 ", regs, re.M), regs
        assert register(regs, "EFL") & 0x200, regs  # IF
        # paused: the state does not move
        assert await client.execute("human-monitor-command", hmp) == regs

        await client.execute("cont")
        await qmp_wait_status(client, vm, "running")
        await client.execute("quit")
    finally:
        await qmp_disconnect(client)
    return [{"event": e["event"], "data": e.get("data", {})} for e in listener.history]


def test_qmp_client_script(system_emulator: str, mbkernel: Path, tmp_path: Path, vm_runner) -> None:
    sock = tmp_path / "qmp.sock"
    serial = tmp_path / "serial.txt"
    vm = vm_runner(
        [
            system_emulator,
            "-display",
            "none",
            "-net",
            "none",
            "-m",
            "128",
            "-serial",
            f"file:{serial}",
            "-kernel",
            str(mbkernel),
            "-append",
            "spin",
            "-S",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ]  # fmt: skip
    )
    events = asyncio.run(qmp_script(vm, sock, serial, symbol_range(mbkernel, "spin")))
    rc, out, err = vm.wait()
    assert rc == 0, err.decode(errors="replace")
    assert [e["event"] for e in events] == ["RESUME", "STOP", "RESUME", "SHUTDOWN"], events
    assert events[-1]["data"] == {"guest": False, "reason": "host-qmp-quit"}
