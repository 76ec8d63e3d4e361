"""``-display curses``: the VGA text screen (and the text consoles, such as the monitor's
``vc``) drawn in the terminal with the standard library's curses, as QEMU's ui/curses.c.

Behaviour taken from QEMU's curses display:
- stdout must be a terminal, else ``We need a terminal output`` and exit status 1;
- input is raw: every key, Ctrl-C and ``q`` included, goes to the guest (or to the text
  console shown); Esc (or Alt) followed by 1..9 selects console 1..9 (1: the VGA screen,
  2...: the ``vc`` chardevs in order, the monitor's first);
- colours: the 8 VGA colours on the terminal's 8, bright foreground as bold.

A refresh thread redraws at about 30 Hz; it reads guest RAM through the VGA object, never
touching device state. Keys for the guest go to ``on_key(key)``: a one-character string
(``"\\x03"`` for Ctrl-C) or a curses key name (``"KEY_UP"``); the machine feeds them to its
keyboard when it has one. On a text console keys become the bytes a terminal sends.

Not done yet: a graphical mode (shown as the text buffer), keyboard layouts, Esc+digit
for more consoles than exist (ignored), the cursor shape.
"""

from __future__ import annotations

import atexit
import curses
import locale
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pyqemu.common.errors import QemuError

from .devices.vga import COLS, CP437, ROWS

REFRESH_HZ = 30

# VGA colour index -> curses colour
_VGA_TO_CURSES = (curses.COLOR_BLACK, curses.COLOR_BLUE, curses.COLOR_GREEN,
                  curses.COLOR_CYAN, curses.COLOR_RED, curses.COLOR_MAGENTA,
                  curses.COLOR_YELLOW, curses.COLOR_WHITE)

# curses keys -> bytes a terminal sends (QEMU's curses2qemu + kbd_put_keysym)
_KEY_BYTES = {
    curses.KEY_UP: b"\x1b[A", curses.KEY_DOWN: b"\x1b[B", curses.KEY_RIGHT: b"\x1b[C",
    curses.KEY_LEFT: b"\x1b[D", curses.KEY_HOME: b"\x1b[1~", curses.KEY_END: b"\x1b[4~",
    curses.KEY_PPAGE: b"\x1b[5~", curses.KEY_NPAGE: b"\x1b[6~", curses.KEY_DC: b"\x1b[3~",
    curses.KEY_BACKSPACE: b"\x7f", curses.KEY_ENTER: b"\n",
}


class DisplayError(QemuError):
    """The display cannot start (printed as is, without the program name)."""


class TextTerminal:
    """A minimal terminal for text consoles: COLS x ROWS cells, CR/LF/BS/TAB and the
    cursor/erase escapes QEMU's monitor line editor sends (CSI A/B/C/D/H/J/K)."""

    def __init__(self, cols: int = COLS, rows: int = ROWS) -> None:
        self.cols = cols
        self.rows = rows
        self.lines = [[" "] * cols for _ in range(rows)]
        self.row = 0
        self.col = 0
        self._esc = b""
        self._utf8 = b""
        self.lock = threading.Lock()
        self.changed = True

    def _newline(self) -> None:
        self.row += 1
        if self.row >= self.rows:
            self.lines.pop(0)
            self.lines.append([" "] * self.cols)
            self.row = self.rows - 1

    def _csi(self, params: bytes, final: str) -> None:
        try:
            nums = [int(p) if p else 0 for p in params.decode().split(";")]
        except ValueError:
            return
        n = max(nums[0], 1)
        if final == "D":
            self.col = max(self.col - n, 0)
        elif final == "C":
            self.col = min(self.col + n, self.cols - 1)
        elif final == "A":
            self.row = max(self.row - n, 0)
        elif final == "B":
            self.row = min(self.row + n, self.rows - 1)
        elif final == "H":
            self.row = min(max(nums[0], 1), self.rows) - 1
            self.col = min(max(nums[1] if len(nums) > 1 else 1, 1), self.cols) - 1
        elif final == "K":
            line = self.lines[self.row]
            if nums[0] == 0:
                line[self.col:] = [" "] * (self.cols - self.col)
            elif nums[0] == 1:
                line[:self.col + 1] = [" "] * (self.col + 1)
            else:
                line[:] = [" "] * self.cols
        elif final == "J" and nums[0] == 2:
            self.lines = [[" "] * self.cols for _ in range(self.rows)]

    def feed(self, data: bytes) -> None:
        """Interpret output bytes."""
        with self.lock:
            self.changed = True
            for byte in data:
                if self._esc:
                    self._esc += bytes((byte,))
                    if self._esc == b"\x1b[":
                        continue
                    if not self._esc.startswith(b"\x1b["):
                        self._esc = b""        # ESC x: ignored
                    elif 0x40 <= byte <= 0x7E:
                        self._csi(self._esc[2:-1], chr(byte))
                        self._esc = b""
                    continue
                if self._utf8 or byte >= 0x80:
                    self._utf8 += bytes((byte,))
                    try:
                        ch = self._utf8.decode()
                    except UnicodeDecodeError:
                        if len(self._utf8) >= 4:
                            self._utf8 = b""
                        continue
                    self._utf8 = b""
                    self._put(ch)
                elif byte == 0x1B:
                    self._esc = b"\x1b"
                elif byte == 0x0D:
                    self.col = 0
                elif byte == 0x0A:
                    self._newline()
                elif byte == 0x08:
                    self.col = max(self.col - 1, 0)
                elif byte == 0x09:
                    self.col = min((self.col // 8 + 1) * 8, self.cols - 1)
                elif byte >= 0x20 and byte != 0x7F:
                    self._put(chr(byte))

    def _put(self, ch: str) -> None:
        if self.col >= self.cols:
            self.col = 0
            self._newline()
        self.lines[self.row][self.col] = ch
        self.col += 1

    def screen(self) -> list[str]:
        """The console as ROWS strings."""
        with self.lock:
            return ["".join(line) for line in self.lines]


class CursesDisplay:
    """The curses display: console 1 the VGA text screen, 2.. the text consoles."""

    def __init__(self, vga: Any, *, consoles: Sequence[Any] = (),
                 on_key: Callable[[str], None] | None = None,
                 refresh_hz: float = REFRESH_HZ) -> None:
        self.vga = vga
        self.on_key = on_key
        self.period = 1.0 / refresh_hz
        self.console = 0
        self.terminals: list[tuple[Any, TextTerminal]] = []
        for vc in consoles:
            term = TextTerminal()
            if hasattr(vc, "add_listener"):
                vc.add_listener(term.feed)
            self.terminals.append((vc, term))
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._screen: Any = None
        self._pairs = False
        self._last: list[Any] | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Take over the terminal and start the refresh thread."""
        if not os.isatty(1):
            raise DisplayError("We need a terminal output")
        self._thread = threading.Thread(target=self._run, name="curses", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise DisplayError(f"curses: {self._error}")

    def stop(self) -> None:
        """Give the terminal back."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _setup(self) -> Any:
        locale.setlocale(locale.LC_ALL, "")
        screen = curses.initscr()
        curses.noecho()
        screen.nodelay(True)
        curses.nonl()
        screen.keypad(True)
        curses.raw()
        screen.scrollok(False)
        try:
            curses.set_escdelay(25)
        except (AttributeError, curses.error):
            pass
        if curses.has_colors():
            curses.start_color()
            for i in range(1, min(64, curses.COLOR_PAIRS - 1) + 1):
                pair = i - 1
                curses.init_pair(i, _VGA_TO_CURSES[pair & 7], _VGA_TO_CURSES[pair >> 3])
            self._pairs = curses.COLOR_PAIRS > 64
        atexit.register(_endwin)
        return screen

    def _run(self) -> None:
        try:
            self._screen = self._setup()
        except Exception as exc:   # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                self._read_keys()
                self._draw()
                self._stop.wait(self.period)
        finally:
            _endwin()

    # input -------------------------------------------------------------------------------
    def _read_keys(self) -> None:
        screen = self._screen
        while True:
            key = screen.getch()
            if key == -1:
                return
            if key == curses.KEY_RESIZE:
                self._last = None
                screen.erase()
                continue
            if key == 0x1B:        # Esc/Alt: a console switch if a digit follows
                nxt = screen.getch()
                if ord("1") <= nxt <= ord("9"):
                    index = nxt - ord("1")
                    if index <= len(self.terminals):
                        self.console = index
                        self._last = None
                        screen.erase()
                    continue
                self._key(0x1B)
                if nxt != -1:
                    self._key(nxt)
                continue
            self._key(key)

    def _key(self, key: int) -> None:
        if self.console == 0:
            if self.on_key is not None:
                if key < 0x100:
                    self.on_key(chr(key))
                else:
                    self.on_key(curses.keyname(key).decode(errors="replace"))
            return
        vc, _ = self.terminals[self.console - 1]
        data = _KEY_BYTES.get(key)
        if data is None:
            data = chr(key).encode() if key < 0x110000 and key < 0x100 else b""
        if data and hasattr(vc, "feed"):
            vc.feed(data)

    # output ------------------------------------------------------------------------------
    def _attr(self, attr: int) -> int:
        if not curses.has_colors():
            return curses.A_REVERSE if attr & 0x70 else curses.A_NORMAL
        fg, bg = attr & 7, (attr >> 4) & 7
        pair = (bg << 3 | fg) + 1
        value = curses.color_pair(pair) if pair < curses.COLOR_PAIRS else 0
        if attr & 0x08:
            value |= curses.A_BOLD
        return value

    def _draw(self) -> None:
        screen = self._screen
        if self.console == 0:
            rows = self.vga.cells()
            row_c, col_c, visible = self.vga.cursor()
        else:
            term = self.terminals[self.console - 1][1]
            rows = [[(ch, 0x07) for ch in line] for line in term.screen()]
            row_c, col_c, visible = term.row, term.col, True
        height, width = screen.getmaxyx()
        last = self._last
        for y, line in enumerate(rows[:height]):
            if last is not None and last[y] == line:
                continue
            for x, (ch, attr) in enumerate(line[:width]):
                glyph = CP437[ch] if isinstance(ch, int) else ch
                try:
                    screen.addstr(y, x, glyph, self._attr(attr))
                except curses.error:
                    pass      # the bottom-right cell of the terminal
        self._last = rows
        try:
            if visible and 0 <= row_c < height and 0 <= col_c < width:
                curses.curs_set(1)
                screen.move(row_c, col_c)
            else:
                curses.curs_set(0)
        except curses.error:
            pass
        screen.refresh()


def _endwin() -> None:
    try:
        if not curses.isendwin():
            curses.endwin()
    except curses.error:
        pass
