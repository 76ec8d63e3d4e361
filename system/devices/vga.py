"""VGA text mode: the registers a text-mode guest and SeaBIOS touch, and the 80x25 text
screen read from guest RAM at 0xB8000 (QEMU's hw/display/vga.c port semantics).

Ports: attribute controller 0x3C0 (index/data flip-flop, reset by reading input status
1) and 0x3C1, misc output 0x3C2 (write) / 0x3CC (read), input status 0 0x3C2 (read),
sequencer 0x3C4/0x3C5, DAC 0x3C7 (read index; reads the DAC state), 0x3C8 (write index),
0x3C9 (data, three bytes per entry), feature control 0x3CA (read) / 0x3BA or 0x3DA
(write), graphics controller 0x3CE/0x3CF, CRTC 0x3B4/0x3B5 or 0x3D4/0x3D5 and input
status 1 0x3BA or 0x3DA, the colour or monochrome set chosen by misc output bit 0 (the
other set reads 0xFF and ignores writes). Reading input status 1 toggles the retrace and
display-enable bits, so that polling loops end. CRTC registers 0-7 are write-protected
while bit 7 of register 0x11 is set (except bit 4 of register 7).

Not modelled: graphics modes and planar memory (the text buffer is plain guest RAM at
0xB8000), fonts, blinking, the VBE extensions, 0x3C6 (pixel mask: reads 0, as in QEMU).
"""

from __future__ import annotations

from typing import Any

TEXT_BASE = 0xB8000
COLS = 80
ROWS = 25

# register masks (QEMU's sr_mask and gr_mask)
_SR_MASK = (0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF)
_GR_MASK = (0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF) + (0x00,) * 7

MISC_COLOR = 0x01
ST01_V_RETRACE = 0x08
ST01_DISP_ENABLE = 0x01
CRTC_CURSOR_START = 0x0A
CRTC_CURSOR_END = 0x0B
CRTC_START_HI = 0x0C
CRTC_START_LO = 0x0D
CRTC_CURSOR_HI = 0x0E
CRTC_CURSOR_LO = 0x0F
CRTC_V_SYNC_END = 0x11
CRTC_OVERFLOW = 0x07

# what the VGA BIOS leaves after mode 3 (80x25 colour text)
_MODE3_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E,
               0x00, 0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3,
               0xFF)
_MODE3_SEQ = (0x03, 0x00, 0x03, 0x00, 0x02)
_MODE3_GC = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x0F, 0xFF)
_MODE3_AC = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B,
             0x3C, 0x3D, 0x3E, 0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00)
_EGA_PALETTE = ((0, 0, 0), (0, 0, 42), (0, 42, 0), (0, 42, 42), (42, 0, 0), (42, 0, 42),
                (42, 21, 0), (42, 42, 42), (21, 21, 21), (21, 21, 63), (21, 63, 21),
                (21, 63, 63), (63, 21, 21), (63, 21, 63), (63, 63, 21), (63, 63, 63))

# code page 437 glyphs of the control range (Python's cp437 codec maps them to C0 codes)
_CP437_LOW = (" ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼")
CP437 = tuple(_CP437_LOW) + tuple(bytes(range(0x20, 0x7F)).decode("ascii")) + ("⌂",) \
    + tuple(bytes(range(0x80, 0x100)).decode("cp437"))

STATE_VERSION = 1
STATE_FIELDS = ("msr", "st00", "st01", "fcr", "ar_index", "ar_flip_flop", "ar", "sr_index",
                "sr", "gr_index", "gr", "cr_index", "cr", "dac_state", "dac_read_index",
                "dac_write_index", "dac_sub_index", "dac_cache", "palette")


class VgaText:
    """A VGA adapter seen as its text screen. ``ram`` is guest RAM (a memoryview or
    bytearray) holding physical address ``base`` at offset ``offset`` (by default
    ``ram`` starts at physical 0). ``bus``: a PortBus to claim the VGA ports on.
    ``bios_mode3``: start in the state a VGA BIOS leaves after setting mode 3 (False:
    QEMU's power-on state, all registers zero)."""

    def __init__(self, ram: Any, bus: Any = None, *, offset: int = TEXT_BASE,
                 bios_mode3: bool = True) -> None:
        self.ram = ram
        self.offset = offset
        self.bios_mode3 = bios_mode3
        self.reset()
        if bus is not None:
            for base, count in ((0x3B4, 2), (0x3BA, 1), (0x3C0, 16), (0x3D4, 2), (0x3DA, 1)):
                bus.register(base, count, self.port_read, self.port_write, "vga",
                             byte_only=True)

    def reset(self) -> None:
        """Power-on (or post-mode-3) register state."""
        self.msr = 0
        self.st00 = 0
        self.st01 = 0
        self.fcr = 0
        self.ar_index = 0
        self.ar_flip_flop = 0
        self.ar = bytearray(21)
        self.sr_index = 0
        self.sr = bytearray(8)
        self.gr_index = 0
        self.gr = bytearray(16)
        self.cr_index = 0
        self.cr = bytearray(256)
        self.dac_state = 0
        self.dac_read_index = 0
        self.dac_write_index = 0
        self.dac_sub_index = 0
        self.dac_cache = bytearray(3)
        self.palette = bytearray(768)
        if self.bios_mode3:
            self.msr = 0x67
            self.cr[:len(_MODE3_CRTC)] = bytes(_MODE3_CRTC)
            self.sr[:len(_MODE3_SEQ)] = bytes(_MODE3_SEQ)
            self.gr[:len(_MODE3_GC)] = bytes(_MODE3_GC)
            self.ar[:len(_MODE3_AC)] = bytes(_MODE3_AC)
            for i, rgb in enumerate(_EGA_PALETTE):
                index = self.ar[i] if i < 16 else i
                self.palette[index * 3:index * 3 + 3] = bytes(rgb)

    # ports -------------------------------------------------------------------------------
    def _invalid(self, port: int) -> bool:
        if self.msr & MISC_COLOR:
            return 0x3B0 <= port <= 0x3BF
        return 0x3D0 <= port <= 0x3DF

    def port_read(self, port: int, size: int = 1) -> int:
        """IN from a VGA port."""
        if self._invalid(port):
            return 0xFF
        if port == 0x3C0:
            return self.ar_index if self.ar_flip_flop == 0 else 0
        if port == 0x3C1:
            index = self.ar_index & 0x1F
            return self.ar[index] if index < 0x15 else 0
        if port == 0x3C2:
            return self.st00
        if port == 0x3C4:
            return self.sr_index
        if port == 0x3C5:
            return self.sr[self.sr_index]
        if port == 0x3C7:
            return self.dac_state
        if port == 0x3C8:
            return self.dac_write_index
        if port == 0x3C9:
            value = self.palette[(self.dac_read_index * 3 + self.dac_sub_index) % 768]
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                self.dac_sub_index = 0
                self.dac_read_index = (self.dac_read_index + 1) & 0xFF
            return value
        if port == 0x3CA:
            return self.fcr
        if port == 0x3CC:
            return self.msr
        if port == 0x3CE:
            return self.gr_index
        if port == 0x3CF:
            return self.gr[self.gr_index]
        if port in (0x3B4, 0x3D4):
            return self.cr_index
        if port in (0x3B5, 0x3D5):
            return self.cr[self.cr_index]
        if port in (0x3BA, 0x3DA):
            self.st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE   # fool polling loops
            self.ar_flip_flop = 0
            return self.st01
        return 0

    def port_write(self, port: int, size: int, value: int) -> None:
        """OUT to a VGA port."""
        value &= 0xFF
        if self._invalid(port):
            return
        if port == 0x3C0:
            if self.ar_flip_flop == 0:
                self.ar_index = value & 0x3F
            else:
                index = self.ar_index & 0x1F
                if index < 0x10:
                    self.ar[index] = value & 0x3F
                elif index == 0x10:
                    self.ar[index] = value & ~0x10 & 0xFF
                elif index == 0x11:
                    self.ar[index] = value
                elif index == 0x12:
                    self.ar[index] = value & ~0xC0 & 0xFF
                elif index in (0x13, 0x14):
                    self.ar[index] = value & 0x0F
            self.ar_flip_flop ^= 1
        elif port == 0x3C2:
            self.msr = value & ~0x10 & 0xFF
        elif port == 0x3C4:
            self.sr_index = value & 7
        elif port == 0x3C5:
            self.sr[self.sr_index] = value & _SR_MASK[self.sr_index]
        elif port == 0x3C7:
            self.dac_read_index = value
            self.dac_sub_index = 0
            self.dac_state = 3
        elif port == 0x3C8:
            self.dac_write_index = value
            self.dac_sub_index = 0
            self.dac_state = 0
        elif port == 0x3C9:
            self.dac_cache[self.dac_sub_index] = value
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                start = self.dac_write_index * 3
                self.palette[start:start + 3] = self.dac_cache
                self.dac_sub_index = 0
                self.dac_write_index = (self.dac_write_index + 1) & 0xFF
        elif port == 0x3CE:
            self.gr_index = value & 0x0F
        elif port == 0x3CF:
            self.gr[self.gr_index] = value & _GR_MASK[self.gr_index]
        elif port in (0x3B4, 0x3D4):
            self.cr_index = value
        elif port in (0x3B5, 0x3D5):
            if self.cr[CRTC_V_SYNC_END] & 0x80 and self.cr_index <= CRTC_OVERFLOW:
                if self.cr_index == CRTC_OVERFLOW:   # bit 4 stays writable
                    self.cr[CRTC_OVERFLOW] = (self.cr[CRTC_OVERFLOW] & ~0x10) | (value & 0x10)
                return
            self.cr[self.cr_index] = value
        elif port in (0x3BA, 0x3DA):
            self.fcr = value & 0x10

    # the text screen ---------------------------------------------------------------------
    def start_address(self) -> int:
        """CRTC start address (in character cells)."""
        return (self.cr[CRTC_START_HI] << 8) | self.cr[CRTC_START_LO]

    def cursor(self) -> tuple[int, int, bool]:
        """(row, column, visible) of the hardware cursor on the screen."""
        location = (self.cr[CRTC_CURSOR_HI] << 8) | self.cr[CRTC_CURSOR_LO]
        cell = location - self.start_address()
        start, end = self.cr[CRTC_CURSOR_START], self.cr[CRTC_CURSOR_END]
        visible = not start & 0x20 and (start & 0x1F) <= (end & 0x1F) \
            and 0 <= cell < COLS * ROWS
        row, col = divmod(cell, COLS) if cell >= 0 else (-1, -1)
        return row, col, visible

    def cursor_shape(self) -> tuple[int, int]:
        """(first scan line, last scan line) of the cursor."""
        return self.cr[CRTC_CURSOR_START] & 0x1F, self.cr[CRTC_CURSOR_END] & 0x1F

    def cells(self) -> list[list[tuple[int, int]]]:
        """ROWS rows of COLS (character, attribute) byte pairs from the text buffer
        (32 KiB window at 0xB8000, wrapping like the hardware's address counter)."""
        base = self.offset
        start = self.start_address() * 2
        window = bytes(self.ram[base:base + 0x8000])
        if len(window) < 0x8000:
            window = window.ljust(0x8000, b"\0")
        rows = []
        for row in range(ROWS):
            line = []
            for col in range(COLS):
                pos = (start + (row * COLS + col) * 2) & 0x7FFF
                line.append((window[pos], window[pos + 1]))
            rows.append(line)
        return rows

    def text_screen(self) -> list[str]:
        """The screen as ROWS strings of COLS characters (code page 437 to Unicode)."""
        return ["".join(CP437[ch] for ch, _ in line) for line in self.cells()]

    # migration ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The guest-visible register state (STATE_FIELDS)."""
        state: dict[str, Any] = {}
        for f in STATE_FIELDS:
            value = getattr(self, f)
            state[f] = bytes(value) if isinstance(value, bytearray) else value
        state["version"] = STATE_VERSION
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned."""
        for f in STATE_FIELDS:
            value = state[f]
            setattr(self, f, bytearray(value) if isinstance(value, bytes) else value)
