"""Drive the real qemu-system-x86_64 (the peer) through its qtest protocol.

The machine is created paused (``-S``): no guest code runs and QEMU's virtual clock
stands still, so every port read is a deterministic function of the port writes and
IRQ inputs we send - exactly what the pyqemu devices get in the tests. A QMP socket is
opened only to find the QOM paths of devices (for ``set_irq_in`` / ``irq_intercept_out``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"


class QemuQtest:
    """A paused QEMU pc machine answering qtest commands on its stdin/stdout."""

    def __init__(self, tmp_path: Path, *args: str, memory: str = "128M"):
        exe = shutil.which(QEMU)
        assert exe is not None, f"{QEMU} (the peer) is not installed"
        self.qmp_path = tmp_path / f"qmp-{time.monotonic_ns()}.sock"
        cmd = [exe, "-machine", "pc", "-S", "-qtest", "stdio", "-qtest-log", "/dev/null",
               "-display", "none", "-nodefaults", "-m", memory,
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.irq_levels: dict[int, bool] = {}
        self.irq_events: list[tuple[str, int]] = []
        self.cmd("endianness")          # wait until the machine answers

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()       # qtest has no quit command
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> QemuQtest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol --------------------------------------------------------------------

    def cmd(self, line: str) -> str:
        """Send one command; return the text after OK (IRQ events are recorded)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"qemu exited during {line!r}")
            reply = reply.rstrip("\n")
            if reply.startswith("IRQ "):
                _, what, num = reply.split()
                self.irq_levels[int(num)] = what == "raise"
                self.irq_events.append((what, int(num)))
                continue
            if reply.startswith("OK"):
                return reply[3:]
            raise RuntimeError(f"qtest {line!r}: {reply}")

    def outb(self, port: int, value: int) -> None:
        self.cmd(f"outb {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        return int(self.cmd(f"inb {port:#x}"), 16)

    def set_irq_in(self, path: str, num: int, level: bool) -> None:
        self.cmd(f"set_irq_in {path} unnamed-gpio-in {num} {int(level)}")

    def irq_intercept_out(self, path: str) -> None:
        self.cmd(f"irq_intercept_out {path}")

    # -- QMP, for QOM paths ------------------------------------------------------------

    def qom_children(self, path: str = "/machine/unattached") -> dict[str, str]:
        """{child path: type} of the QOM children of ``path``."""
        deadline = time.monotonic() + 10
        while not self.qmp_path.exists():
            assert time.monotonic() < deadline, "QMP socket never appeared"
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.qmp_path))
            f = sock.makefile("rw")

            def execute(name: str, **arguments: object) -> object:
                f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
                f.flush()
                while True:
                    msg = json.loads(f.readline())
                    if "return" in msg:
                        return msg["return"]
                    assert "error" not in msg, msg

            json.loads(f.readline())    # greeting
            execute("qmp_capabilities")
            entries = execute("qom-list", path=path)
        assert isinstance(entries, list)
        return {f"{path}/{e['name']}": e["type"][6:-1] for e in entries
                if e["type"].startswith("child<")}

    def device_paths(self, qom_type: str) -> list[str]:
        """QOM paths of the devices of a type, in creation order."""
        found = [(p, t) for p, t in self.qom_children().items() if t == qom_type]
        return [p for p, _ in sorted(found, key=lambda e: int(e[0].rsplit("[", 1)[1][:-1]))]
