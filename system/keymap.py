"""Terminal keys to PS/2 scan code set 2 bytes (US layout), for -display curses.

The display hands over a character (``"a"``, ``"A"``, ``"\\r"``, ``"\\x03"``) or a curses
key name (``"KEY_UP"``); the keyboard gets make and break codes as a real PS/2 keyboard
sends them in set 2 (the i8042 translates to set 1 when the guest asks for it). Shifted
characters are sent with left Shift around them, control characters with left Ctrl.
"""

from __future__ import annotations

LSHIFT = 0x12
LCTRL = 0x14

# unshifted character -> set 2 make code
_PLAIN = {
    "`": 0x0E, "1": 0x16, "2": 0x1E, "3": 0x26, "4": 0x25, "5": 0x2E, "6": 0x36,
    "7": 0x3D, "8": 0x3E, "9": 0x46, "0": 0x45, "-": 0x4E, "=": 0x55,
    "q": 0x15, "w": 0x1D, "e": 0x24, "r": 0x2D, "t": 0x2C, "y": 0x35, "u": 0x3C,
    "i": 0x43, "o": 0x44, "p": 0x4D, "[": 0x54, "]": 0x5B, "\\": 0x5D,
    "a": 0x1C, "s": 0x1B, "d": 0x23, "f": 0x2B, "g": 0x34, "h": 0x33, "j": 0x3B,
    "k": 0x42, "l": 0x4B, ";": 0x4C, "'": 0x52,
    "z": 0x1A, "x": 0x22, "c": 0x21, "v": 0x2A, "b": 0x32, "n": 0x31, "m": 0x3A,
    ",": 0x41, ".": 0x49, "/": 0x4A, " ": 0x29,
    "\r": 0x5A, "\n": 0x5A, "\t": 0x0D, "\x1b": 0x76, "\x7f": 0x66, "\x08": 0x66,
}
_SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./", strict=True))

# curses key names: (extended, make code)
_NAMED = {
    "KEY_UP": (True, 0x75), "KEY_DOWN": (True, 0x72), "KEY_LEFT": (True, 0x6B),
    "KEY_RIGHT": (True, 0x74), "KEY_HOME": (True, 0x6C), "KEY_END": (True, 0x69),
    "KEY_PPAGE": (True, 0x7D), "KEY_NPAGE": (True, 0x7A), "KEY_IC": (True, 0x70),
    "KEY_DC": (True, 0x71), "KEY_BACKSPACE": (False, 0x66), "KEY_ENTER": (False, 0x5A),
    **{f"KEY_F({n})": (False, code) for n, code in zip(
        range(1, 13), (0x05, 0x06, 0x04, 0x0C, 0x03, 0x0B, 0x83, 0x0A, 0x01, 0x09, 0x78,
                       0x07), strict=True)},
}


def _press(code: int, extended: bool = False) -> bytes:
    prefix = b"\xe0" if extended else b""
    return prefix + bytes([code]) + prefix + bytes([0xF0, code])


def _with(modifier: int, inner: bytes) -> bytes:
    return bytes([modifier]) + inner + bytes([0xF0, modifier])


def key_to_scancodes(key: str) -> bytes:
    """Set 2 bytes for one key from the display (b"" for keys without a mapping)."""
    if key in _NAMED:
        extended, code = _NAMED[key]
        return _press(code, extended)
    if len(key) != 1:
        return b""
    if key in _PLAIN:
        return _press(_PLAIN[key])
    if key.isascii() and key.isupper():
        return _with(LSHIFT, _press(_PLAIN[key.lower()]))
    if key in _SHIFTED:
        return _with(LSHIFT, _press(_PLAIN[_SHIFTED[key]]))
    code = ord(key)
    if 1 <= code <= 26:                     # Ctrl-A .. Ctrl-Z
        return _with(LCTRL, _press(_PLAIN[chr(code + 96)]))
    return b""
