"""ATA/ATAPI on the two legacy IDE channels of the PIIX3, with bus-master DMA.

Behaviour follows QEMU's hw/ide/core.c, atapi.c and pci.c (the BMDMA engine):

* ports 0x1F0-0x1F7 / 0x3F6 (IRQ 14) and 0x170-0x177 / 0x376 (IRQ 15); the data port
  takes 2- and 4-byte accesses (a byte access reads the 0xFF of QEMU's register 0);
* ATA disks over ``common.block`` images: IDENTIFY DEVICE (QEMU's words, serial
  ``QM0000N`` by slot, firmware ``2.5+``, CHS geometry as hd_geometry_guess computes it
  from the MBR or the size), READ/WRITE SECTORS (+EXT), READ/WRITE MULTIPLE (+EXT), SET
  MULTIPLE MODE, READ/WRITE DMA (+EXT) through the BMDMA PRD table, READ VERIFY, SEEK,
  FLUSH CACHE (+EXT), SET FEATURES (write cache, transfer mode), INITIALIZE DEVICE
  PARAMETERS, RECALIBRATE, READ NATIVE MAX ADDRESS (+EXT), CHECK POWER MODE, the power
  commands as no-ops, EXECUTE DEVICE DIAGNOSTIC, SMART ENABLE/DISABLE/RETURN STATUS;
* ATAPI CD-ROM: IDENTIFY PACKET DEVICE, PACKET with TEST UNIT READY, REQUEST SENSE,
  INQUIRY (standard data and VPD pages 0x00/0x83), READ CAPACITY, READ(10), READ(12),
  READ CD (2048-byte and raw 2352-byte sectors), SEEK(10), START STOP UNIT (tray),
  PREVENT ALLOW MEDIUM REMOVAL, MODE SENSE(10) (pages 0x01, 0x0E, 0x2A), READ TOC
  (formats 0, 1, 2), GET CONFIGURATION, GET EVENT STATUS NOTIFICATION (media class),
  READ DISC INFORMATION, READ DVD STRUCTURE, SET CD SPEED, MECHANISM STATUS; data by
  PIO or DMA; media change (not ready, then unit attention, then a new-media event);
* software reset (SRST in the device control register), nIEN, status/alternate status,
  the IRQ raised when QEMU raises it and lowered by a status read or a command write.

Everything completes synchronously: where QEMU's asynchronous block I/O would show BSY for
a while, the guest here sees the finished state at once.

Not modelled: SMART data/log pages and self tests, DATA SET MANAGEMENT (TRIM), CFA
commands, rerror/werror policies (an I/O error aborts the command), the bytes QEMU
leaves uninitialised in some ATAPI replies (zero here). El Torito is the BIOS's business:
SeaBIOS boots a CD through READ(10).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..bus import IrqLine, PortBus

SECTOR = 512
CD_SECTOR = 2048
CD_RAW_SECTOR = 2352
CD_MAX_SECTORS = 80 * 60 * 75 * 2048 // 512      # larger media are DVDs
MMC_PROFILE_CD_ROM = 0x0008
MMC_PROFILE_DVD_ROM = 0x0010
MAX_MULT_SECTORS = 16

# status register
ERR_STAT = 0x01
DRQ_STAT = 0x08
SEEK_STAT = 0x10
READY_STAT = 0x40
BUSY_STAT = 0x80
# error register
ABRT_ERR = 0x04
# device control register
CTRL_DISABLE_IRQ = 0x02
CTRL_RESET = 0x04
CTRL_HOB = 0x80
# device/head register
DEV_ALWAYS_ON = 0xA0
DEV_LBA = 0x40
DEV_SELECT = 0x10
DEV_HS = 0x0F

# BMDMA
BM_CMD_START = 0x01
BM_CMD_READ = 0x08
BM_STATUS_DMAING = 0x01
BM_STATUS_ERROR = 0x02
BM_STATUS_INT = 0x04
BMDMA_PAGE_SIZE = 4096

# ATAPI
ATAPI_PACKET_SIZE = 12
ATAPI_INT_REASON_CD = 0x01
ATAPI_INT_REASON_IO = 0x02
NO_SENSE = 0x00
NOT_READY = 0x02
ILLEGAL_REQUEST = 0x05
UNIT_ATTENTION = 0x06
ASC_ILLEGAL_OPCODE = 0x20
ASC_LOGICAL_BLOCK_OOR = 0x21
ASC_INV_FIELD_IN_CMD_PACKET = 0x24
ASC_MEDIUM_NOT_PRESENT = 0x3A
ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x39
ASC_DATA_PHASE_ERROR = 0x4B
ASC_INCOMPATIBLE_FORMAT = 0x30
ASC_MEDIUM_MAY_HAVE_CHANGED = 0x28
ASC_MEDIA_REMOVAL_PREVENTED = 0x53

# BIOS translation hints (QEMU's BIOS_ATA_TRANSLATION_*), for CMOS register 0x39
TRANSLATION_NONE = 1
TRANSLATION_LBA = 2
TRANSLATION_LARGE = 3

# ATA command codes (ACS-2 table B.2 names, as QEMU's WIN_*)
CMD_DEVICE_RESET = 0x08
CMD_RECALIBRATE = 0x10
CMD_READ = 0x20
CMD_READ_ONCE = 0x21
CMD_READ_EXT = 0x24
CMD_READ_DMA_EXT = 0x25
CMD_READ_NATIVE_MAX_EXT = 0x27
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE = 0x30
CMD_WRITE_ONCE = 0x31
CMD_WRITE_EXT = 0x34
CMD_WRITE_DMA_EXT = 0x35
CMD_WRITE_MULTIPLE_EXT = 0x39
CMD_WRITE_VERIFY = 0x3C
CMD_VERIFY = 0x40
CMD_VERIFY_ONCE = 0x41
CMD_VERIFY_EXT = 0x42
CMD_SEEK = 0x70
CMD_DIAGNOSE = 0x90
CMD_SPECIFY = 0x91
CMD_STANDBYNOW2 = 0x94
CMD_IDLEIMMEDIATE2 = 0x95
CMD_STANDBY2 = 0x96
CMD_SETIDLE2 = 0x97
CMD_CHECKPOWERMODE2 = 0x98
CMD_SLEEPNOW2 = 0x99
CMD_PACKET = 0xA0
CMD_IDENTIFY_PACKET = 0xA1
CMD_SMART = 0xB0
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE = 0xC6
CMD_READ_DMA = 0xC8
CMD_READ_DMA_ONCE = 0xC9
CMD_WRITE_DMA = 0xCA
CMD_WRITE_DMA_ONCE = 0xCB
CMD_STANDBYNOW1 = 0xE0
CMD_IDLEIMMEDIATE = 0xE1
CMD_STANDBY = 0xE2
CMD_SETIDLE1 = 0xE3
CMD_CHECKPOWERMODE1 = 0xE5
CMD_SLEEPNOW1 = 0xE6
CMD_FLUSH_CACHE = 0xE7
CMD_FLUSH_CACHE_EXT = 0xEA
CMD_IDENTIFY = 0xEC
CMD_SET_FEATURES = 0xEF
CMD_READ_NATIVE_MAX = 0xF8

STATE_VERSION = 1
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

DmaRead = Callable[[int, int], bytes]
DmaWrite = Callable[[int, bytes], None]


class IdeError(Exception):
    """A drive that cannot be attached (QEMU's message)."""


def _padstr(text: str, length: int) -> bytes:
    """An ATA string: space padded, bytes swapped in each word (QEMU's padstr)."""
    raw = text.encode("ascii", "replace")[:length].ljust(length, b" ")
    out = bytearray(length)
    out[0::2] = raw[1::2]
    out[1::2] = raw[0::2]
    return bytes(out)


def _padstr8(text: str, length: int) -> bytes:
    return text.encode("ascii", "replace")[:length].ljust(length, b" ")


def _lba_to_msf(lba: int) -> bytes:
    lba += 150
    return bytes([(lba // 75) // 60 & 0xFF, (lba // 75) % 60, lba % 75])


def _raw_sector(lba: int, data: bytes) -> bytes:
    """A 2352-byte mode 1 sector: sync, MSF header, the data, ECC left zero (QEMU's)."""
    return b"\x00" + b"\xff" * 10 + b"\x00" + _lba_to_msf(lba) + b"\x01" + data + bytes(288)


def guess_geometry(image: Any, nb_sectors: int) -> tuple[int, int, int, int]:
    """(cylinders, heads, sectors, translation) as QEMU's hd_geometry_guess does for an
    image without user geometry: the MBR's partition ends if they give <= 16 heads, else
    16 heads, 63 sectors and the size's cylinders (2..16383)."""
    def for_size() -> tuple[int, int, int]:
        return max(2, min(16383, nb_sectors // (16 * 63))), 16, 63

    lchs = None
    try:
        mbr = image.read(0, SECTOR) if nb_sectors else b""
    except Exception:  # noqa: BLE001 - an unreadable MBR is "no guess", as in QEMU
        mbr = b""
    if len(mbr) == SECTOR and mbr[510] == 0x55 and mbr[511] == 0xAA:
        for i in range(4):
            entry = mbr[0x1BE + 16 * i:0x1BE + 16 * (i + 1)]
            nr_sects = struct.unpack_from("<I", entry, 12)[0]
            end_head = entry[5]
            if nr_sects and end_head:
                heads = end_head + 1
                sectors = entry[6] & 63
                if sectors == 0:
                    continue
                cylinders = nb_sectors // (heads * sectors)
                if cylinders < 1 or cylinders > 16383:
                    continue
                lchs = (cylinders, heads, sectors)
                break
    if lchs is None:
        cyls, heads, secs = for_size()
        trans = TRANSLATION_NONE if cyls <= 1024 and heads <= 16 and secs <= 63 \
            else TRANSLATION_LBA
    elif lchs[1] > 16:
        cyls, heads, secs = for_size()
        trans = TRANSLATION_LARGE if cyls * heads <= 131072 else TRANSLATION_LBA
    else:
        cyls, heads, secs = lchs
        trans = TRANSLATION_NONE
    return cyls, heads, secs, trans


class IdeDrive:
    """One ATA disk or ATAPI CD-ROM (QEMU's IDEState) on a channel."""

    def __init__(self, channel: IdeChannel, unit: int, serial_number: int):
        self.channel = channel
        self.unit = unit
        self.image: Any = None
        self.cdrom = False
        self.present = False
        self.serial = f"QM{serial_number:05d}"
        self.model = ""
        self.version = "2.5+"
        self.nb_sectors = 0
        self.cylinders = self.heads = self.sectors = 0
        self.translation = TRANSLATION_NONE
        self.write_cache = True
        self.identify_data: bytearray | None = None
        self.io_buffer = bytearray(256 * SECTOR + 4)
        self.smart_enabled = True
        self.tray_locked = False
        self.tray_open = False
        self.cdrom_changed = 0
        self.new_media_event = False
        self.eject_request_event = False
        self._reset_state()

    # -- configuration ------------------------------------------------------------------

    def attach(self, image: Any, *, cdrom: bool, serial: str | None, model: str | None) -> None:
        if not cdrom:
            if image is None:
                raise IdeError("Device needs media, but drive is empty")
            if image.read_only:
                raise IdeError("Block node is read-only")     # QEMU 7.2's message
        self.image = image
        self.cdrom = cdrom
        self.present = True
        if serial is not None:
            self.serial = serial[:20]
        self.model = model or ("QEMU DVD-ROM" if cdrom else "QEMU HARDDISK")
        self.nb_sectors = image.size // SECTOR if image is not None else 0
        if not cdrom:
            (self.cylinders, self.heads, self.sectors,
             self.translation) = guess_geometry(image, self.nb_sectors)
        self.identify_data = None
        self._reset_state()

    def change_media(self, image: Any) -> None:
        """Insert (or with None eject) the CD-ROM's medium (ide_cd_change_cb): the guest
        sees "not ready", then a unit attention, and a new-media event."""
        self.image = image
        self.nb_sectors = image.size // SECTOR if image is not None else 0
        self.tray_open = image is None
        self.cdrom_changed = 1
        self.new_media_event = True
        self.eject_request_event = False
        self._set_irq()

    def _media_present(self) -> bool:
        return not self.tray_open and self.image is not None and self.nb_sectors > 0

    # -- migration ------------------------------------------------------------------------

    # guest-visible fields (QEMU's vmstate "ide_drive" v3 with its PIO and tray sections)
    VMSTATE_FIELDS = ("mult_sectors", "feature", "error", "nsector", "sector", "lcyl",
                      "hcyl", "hob_feature", "hob_sector", "hob_nsector", "hob_lcyl",
                      "hob_hcyl", "select", "status", "lba48", "sense_key", "asc",
                      "cdrom_changed", "req_nb_sectors", "data_ptr", "data_end",
                      "elementary_transfer_size", "packet_transfer_size", "io_buffer_index",
                      "io_buffer_size", "cd_sector_size", "lba", "atapi_dma", "dma_cmd",
                      "tray_open", "tray_locked", "new_media_event", "eject_request_event",
                      "write_cache", "smart_enabled", "pio_out")
    _END_TRANSFER = ("_sector_read", "_sector_write", "_transfer_stop", "_atapi_reply_end",
                     "_atapi_cmd", "_dummy_transfer_stop")

    def get_state(self) -> dict[str, Any]:
        state = {f: getattr(self, f) for f in self.VMSTATE_FIELDS}
        state["io_buffer"] = bytes(self.io_buffer)
        state["identify_data"] = None if self.identify_data is None else bytes(
            self.identify_data)
        state["end_transfer"] = self.end_transfer.__name__
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for f in self.VMSTATE_FIELDS:
            setattr(self, f, state[f])
        self.io_buffer[:] = state["io_buffer"]
        data = state["identify_data"]
        self.identify_data = None if data is None else bytearray(data)
        name = state["end_transfer"]
        if name not in self._END_TRANSFER:
            raise ValueError(f"invalid IDE transfer state {name!r}")
        self.end_transfer = getattr(self, name)

    # -- state ----------------------------------------------------------------------------

    def _reset_state(self) -> None:
        """ide_reset: registers, signature, transfer state."""
        self.mult_sectors = MAX_MULT_SECTORS
        self.feature = self.error = self.nsector = self.sector = 0
        self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = 0
        self.hob_lcyl = self.hob_hcyl = 0
        self.select = DEV_ALWAYS_ON
        self.status = READY_STAT | SEEK_STAT
        self.lba48 = False
        self.sense_key = 0
        self.asc = 0
        self.packet_transfer_size = 0
        self.elementary_transfer_size = 0
        self.io_buffer_index = 0
        self.cd_sector_size = 0
        self.atapi_dma = False
        self.lba = -1
        self.tray_locked = False
        self.tray_open = False
        self.cdrom_changed = 0
        self.req_nb_sectors = 0
        self.dma_cmd: str | None = None
        self.io_buffer_size = 0
        self._set_signature()
        # ide_dummy_transfer_stop: an empty PIO buffer
        self.data_ptr = 0
        self.data_end = 0
        self.end_transfer: Callable[[], None] = self._dummy_transfer_stop
        self.pio_out = True
        self.io_buffer[0:4] = b"\xff\xff\xff\xff"

    def _dummy_transfer_stop(self) -> None:
        self.data_ptr = self.data_end = 0
        self.io_buffer[0:4] = b"\xff\xff\xff\xff"

    def _set_signature(self) -> None:
        # QEMU 7.2 leaves only the always-on bits and DEV (LBA and head cleared)
        self.select = DEV_ALWAYS_ON | (self.select & DEV_SELECT)
        self.nsector = 1
        self.sector = 1
        if self.cdrom:
            self.lcyl, self.hcyl = 0x14, 0xEB
        elif self.present:
            self.lcyl = self.hcyl = 0
        else:
            self.lcyl = self.hcyl = 0xFF

    def _abort(self) -> None:
        self._transfer_stop()
        self.status = READY_STAT | ERR_STAT
        self.error = ABRT_ERR

    def _set_irq(self) -> None:
        self.channel.raise_irq()

    # -- PIO transfers ----------------------------------------------------------------

    def _transfer_start(self, start: int, size: int, end: Callable[[], None],
                        pio_out: bool) -> None:
        """Hand io_buffer[start:start+size] to the guest (pio_out) or take it from it."""
        self.data_ptr = start
        self.data_end = start + size
        if not self.status & ERR_STAT:
            self.status |= DRQ_STAT
        self.end_transfer = end
        self.pio_out = pio_out

    def _transfer_halt(self) -> None:
        self.end_transfer = self._transfer_stop
        self.pio_out = True
        self.data_ptr = self.data_end = 0
        self.status &= ~DRQ_STAT

    def _transfer_stop(self) -> None:
        self._transfer_halt()

    # -- sector addressing ------------------------------------------------------------

    def get_sector(self) -> int:
        if self.select & DEV_LBA:
            if self.lba48:
                return (self.hob_hcyl << 40 | self.hob_lcyl << 32 | self.hob_sector << 24
                        | self.hcyl << 16 | self.lcyl << 8 | self.sector)
            return (self.select & 0x0F) << 24 | self.hcyl << 16 | self.lcyl << 8 | self.sector
        return (((self.hcyl << 8) | self.lcyl) * self.heads * self.sectors
                + (self.select & DEV_HS) * self.sectors + (self.sector - 1))

    def set_sector(self, num: int) -> None:
        if self.select & DEV_LBA:
            if self.lba48:
                self.sector = num & 0xFF
                self.lcyl = (num >> 8) & 0xFF
                self.hcyl = (num >> 16) & 0xFF
                self.hob_sector = (num >> 24) & 0xFF
                self.hob_lcyl = (num >> 32) & 0xFF
                self.hob_hcyl = (num >> 40) & 0xFF
            else:
                self.select = (self.select & ~0x0F) | ((num >> 24) & 0x0F)
                self.hcyl = (num >> 16) & 0xFF
                self.lcyl = (num >> 8) & 0xFF
                self.sector = num & 0xFF
        else:
            per_cyl = self.heads * self.sectors
            cyl, r = divmod(num, per_cyl) if per_cyl else (0, 0)
            self.hcyl = (cyl >> 8) & 0xFF
            self.lcyl = cyl & 0xFF
            self.select = (self.select & ~DEV_HS) | ((r // self.sectors) & DEV_HS
                                                     if self.sectors else 0)
            self.sector = (r % self.sectors) + 1 if self.sectors else 1

    def _lba48_transform(self, lba48: bool) -> None:
        self.lba48 = lba48
        if not lba48:
            if not self.nsector:
                self.nsector = 256
        elif not self.nsector and not self.hob_nsector:
            self.nsector = 65536
        else:
            self.nsector = (self.hob_nsector << 8) | self.nsector

    def _range_ok(self, sector: int, count: int) -> bool:
        return sector <= self.nb_sectors and count <= self.nb_sectors - sector

    # -- PIO read / write ---------------------------------------------------------------

    def _sector_read(self) -> None:
        self.status = READY_STAT | SEEK_STAT
        self.error = 0
        sector_num = self.get_sector()
        n = self.nsector
        if n == 0:
            self._transfer_stop()
            return
        n = min(n, self.req_nb_sectors)
        if not self._range_ok(sector_num, n):
            self._rw_error()
            return
        try:
            data = self.image.read(sector_num * SECTOR, n * SECTOR)
        except Exception:  # noqa: BLE001 - I/O errors abort the command (werror=report)
            self._rw_error()
            return
        self.io_buffer[0:n * SECTOR] = data
        self.set_sector(sector_num + n)
        self.nsector -= n
        self._transfer_start(0, n * SECTOR, self._sector_read, True)
        self._set_irq()

    def _sector_write(self) -> None:
        self.status = READY_STAT | SEEK_STAT
        sector_num = self.get_sector()
        n = min(self.nsector, self.req_nb_sectors)
        if not self._range_ok(sector_num, n):
            self._rw_error()
            return
        try:
            self.image.write(sector_num * SECTOR, bytes(self.io_buffer[0:n * SECTOR]))
        except Exception:  # noqa: BLE001
            self._rw_error()
            return
        self.nsector -= n
        self.set_sector(sector_num + n)
        if self.nsector == 0:
            self._transfer_stop()
        else:
            n1 = min(self.nsector, self.req_nb_sectors)
            self._transfer_start(0, n1 * SECTOR, self._sector_write, False)
        self._set_irq()

    def _rw_error(self) -> None:
        self._abort()
        self._set_irq()

    def _flush(self) -> None:
        if self.image is not None:
            try:
                self.image.flush()
            except Exception:  # noqa: BLE001
                self._rw_error()
                return
        self.status = READY_STAT | SEEK_STAT
        self._set_irq()

    # -- IDENTIFY -----------------------------------------------------------------------

    def _identify(self) -> None:
        if self.identify_data is None:
            w = [0] * 256
            w[0] = 0x0040
            w[1] = self.cylinders
            w[3] = self.heads
            w[4] = (512 * self.sectors) & 0xFFFF
            w[5] = 512
            w[6] = self.sectors
            w[20] = 3
            w[21] = 512
            w[22] = 4
            w[47] = 0x8000 | MAX_MULT_SECTORS
            w[48] = 1
            w[49] = (1 << 11) | (1 << 9) | (1 << 8)
            w[51] = 0x200
            w[52] = 0x200
            w[53] = 1 | (1 << 1) | (1 << 2)
            w[54] = self.cylinders
            w[55] = self.heads
            w[56] = self.sectors
            oldsize = self.cylinders * self.heads * self.sectors
            w[57] = oldsize & 0xFFFF
            w[58] = (oldsize >> 16) & 0xFFFF
            if self.mult_sectors:
                w[59] = 0x100 | self.mult_sectors
            lba28 = min(self.nb_sectors, (1 << 28) - 1)
            w[60] = lba28 & 0xFFFF
            w[61] = lba28 >> 16
            w[62] = 0x07
            w[63] = 0x07
            w[64] = 0x03
            w[65] = w[66] = w[67] = w[68] = 120
            w[69] = 1 << 14                 # determinate TRIM (discard_granularity 512)
            w[80] = 0xF0
            w[81] = 0x16
            w[82] = (1 << 14) | (1 << 5) | 1
            w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)
            w[84] = 1 << 14
            w[85] = (1 << 14) | (1 << 5) | 1 if self.write_cache else (1 << 14) | 1
            w[86] = (1 << 13) | (1 << 12) | (1 << 10)
            w[87] = 1 << 14
            w[88] = 0x3F | (1 << 13)
            w[93] = 1 | (1 << 14) | 0x2000
            for i in range(4):
                w[100 + i] = (self.nb_sectors >> (16 * i)) & 0xFFFF
            w[106] = 0x6000                 # physical block size 512 (exponent 0)
            w[169] = 1                      # TRIM supported
            w[217] = 0                      # rotation rate: not reported
            data = bytearray(struct.pack("<256H", *w))
            data[20:40] = _padstr(self.serial, 20)
            data[46:54] = _padstr(self.version, 8)
            data[54:94] = _padstr(self.model, 40)
            self.identify_data = data
        self.io_buffer[0:512] = self.identify_data

    def _atapi_identify(self) -> None:
        if self.identify_data is None:
            w = [0] * 256
            w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5)
            w[20] = 3
            w[21] = 512
            w[22] = 4
            w[48] = 1
            w[49] = (1 << 9) | (1 << 8)
            w[53] = 7
            w[62] = 7
            w[63] = 7
            w[64] = 3
            w[65] = 0xB4
            w[66] = 0xB4
            w[67] = 0x12C
            w[68] = 0xB4
            w[71] = 30
            w[72] = 30
            w[80] = 0x1E
            w[88] = 0x3F | (1 << 13)
            data = bytearray(struct.pack("<256H", *w))
            data[20:40] = _padstr(self.serial, 20)
            data[46:54] = _padstr(self.version, 8)
            data[54:94] = _padstr(self.model, 40)
            self.identify_data = data
        self.io_buffer[0:512] = self.identify_data

    def _set_identify_word(self, index: int, value: int) -> None:
        if self.identify_data is not None:
            struct.pack_into("<H", self.identify_data, 2 * index, value)

    # -- commands -------------------------------------------------------------------------
    # Each returns True when the common completion (clear BSY, DSC, IRQ) should run.

    def cmd_nop(self, cmd: int) -> bool:
        return True

    def cmd_device_reset(self, cmd: int) -> bool:
        self._transfer_halt()
        self._reset_state()
        self.status = 0x00
        return False

    def cmd_identify(self, cmd: int) -> bool:
        if self.present and not self.cdrom:
            self._identify()
            self.status = READY_STAT | SEEK_STAT
            self._transfer_start(0, 512, self._transfer_stop, True)
            self._set_irq()
            return False
        if self.cdrom:
            self._set_signature()
        self._abort()
        return True

    def cmd_verify(self, cmd: int) -> bool:
        self._lba48_transform(cmd == CMD_VERIFY_EXT)
        return True

    def cmd_set_multiple_mode(self, cmd: int) -> bool:
        count = self.nsector & 0xFF
        if count and (count > MAX_MULT_SECTORS or self.nsector & (self.nsector - 1)):
            self._abort()
        else:
            self.mult_sectors = count
        return True

    def cmd_read_multiple(self, cmd: int) -> bool:
        if not self.present or not self.mult_sectors:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_READ_MULTIPLE_EXT)
        self.req_nb_sectors = self.mult_sectors
        self._sector_read()
        return False

    def cmd_write_multiple(self, cmd: int) -> bool:
        if not self.present or not self.mult_sectors:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_WRITE_MULTIPLE_EXT)
        self.req_nb_sectors = self.mult_sectors
        n = min(self.nsector, self.req_nb_sectors)
        self.status = SEEK_STAT | READY_STAT
        self._transfer_start(0, n * SECTOR, self._sector_write, False)
        return False

    def cmd_read_pio(self, cmd: int) -> bool:
        if self.cdrom:
            self._set_signature()
            self._abort()
            return True
        if not self.present:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_READ_EXT)
        self.req_nb_sectors = 1
        self._sector_read()
        return False

    def cmd_write_pio(self, cmd: int) -> bool:
        if not self.present:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_WRITE_EXT)
        self.req_nb_sectors = 1
        self.status = SEEK_STAT | READY_STAT
        self._transfer_start(0, SECTOR, self._sector_write, False)
        return False

    def cmd_read_dma(self, cmd: int) -> bool:
        if not self.present:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_READ_DMA_EXT)
        self._sector_start_dma("read")
        return False

    def cmd_write_dma(self, cmd: int) -> bool:
        if not self.present:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_WRITE_DMA_EXT)
        self._sector_start_dma("write")
        return False

    def cmd_flush_cache(self, cmd: int) -> bool:
        self._flush()
        return False

    def cmd_read_native_max(self, cmd: int) -> bool:
        if self.nb_sectors == 0:
            self._abort()
            return True
        self._lba48_transform(cmd == CMD_READ_NATIVE_MAX_EXT)
        self.set_sector(self.nb_sectors - 1)
        return True

    def cmd_check_power_mode(self, cmd: int) -> bool:
        self.nsector = 0xFF
        return True

    def cmd_set_features(self, cmd: int) -> bool:
        if not self.present:
            self._abort()
            return True
        feature = self.feature
        if feature == 0x02:
            self.write_cache = True
            self._set_identify_word(85, (1 << 14) | (1 << 5) | 1)
            return True
        if feature == 0x82:
            self.write_cache = False
            self._set_identify_word(85, (1 << 14) | 1)
            self._flush()
            return False
        if feature in (0xCC, 0x66, 0xAA, 0x55, 0x05, 0x85, 0x69, 0x67, 0x96, 0x9A,
                       0x42, 0xC2):
            return True
        if feature == 0x03:
            val = self.nsector & 0x07
            mode = self.nsector >> 3
            if self.identify_data is None:
                # QEMU writes into identify_data even before the first IDENTIFY
                (self._atapi_identify if self.cdrom else self._identify)()
            if mode in (0x00, 0x01):
                words = (0x07, 0x07, 0x3F)
            elif mode == 0x02:
                words = (0x07 | (1 << (val + 8)), 0x07, 0x3F)
            elif mode == 0x04:
                words = (0x07, 0x07 | (1 << (val + 8)), 0x3F)
            elif mode == 0x08:
                words = (0x07, 0x07, 0x3F | (1 << (val + 8)))
            else:
                self._abort()
                return True
            self._set_identify_word(62, words[0])
            self._set_identify_word(63, words[1])
            self._set_identify_word(88, words[2])
            return True
        self._abort()
        return True

    def cmd_identify_packet(self, cmd: int) -> bool:
        self._atapi_identify()
        self.status = READY_STAT | SEEK_STAT
        self._transfer_start(0, 512, self._transfer_stop, True)
        self._set_irq()
        return False

    def cmd_exec_dev_diagnostic(self, cmd: int) -> bool:
        self._set_signature()
        if self.cdrom:
            self.status = 0
            self.error = 0x01
        else:
            self.status = READY_STAT | SEEK_STAT
            self.error = 0x01
            self._set_irq()
        return False

    def cmd_packet(self, cmd: int) -> bool:
        if self.feature & 0x02:
            self._abort()
            return True
        self.status = READY_STAT | SEEK_STAT
        self.atapi_dma = bool(self.feature & 1)
        if self.atapi_dma:
            self.dma_cmd = "atapi"
        self.nsector = 1
        self._transfer_start(0, ATAPI_PACKET_SIZE, self._atapi_cmd, False)
        return False

    def cmd_smart(self, cmd: int) -> bool:
        if self.hcyl != 0xC2 or self.lcyl != 0x4F:
            self._abort()
            return True
        if not self.smart_enabled and self.feature != 0xD8:
            self._abort()
            return True
        if self.feature == 0xD9:            # SMART DISABLE OPERATIONS
            self.smart_enabled = False
            return True
        if self.feature == 0xD8:            # SMART ENABLE OPERATIONS
            self.smart_enabled = True
            return True
        if self.feature == 0xDA:            # SMART RETURN STATUS: no threshold exceeded
            self.hcyl, self.lcyl = 0xC2, 0x4F
            return True
        self._abort()
        return True

    # -- DMA --------------------------------------------------------------------------------

    def _sector_start_dma(self, kind: str) -> None:
        self.status = READY_STAT | SEEK_STAT | DRQ_STAT
        self.io_buffer_size = 0
        self.dma_cmd = kind
        self.channel.bmdma.start_dma(self)

    def run_dma(self, bm: BmDma) -> None:
        """The BMDMA engine is started and a DMA command waits: move the data."""
        if self.dma_cmd == "atapi":
            self._atapi_dma(bm)
            return
        n = self.nsector
        limit = n * SECTOR
        regions, prd_bytes = bm.prepare(limit)
        got = sum(length for _, length in regions)
        if got < limit:
            # PRDs too short: reset the Active bit, no interrupt, nothing moved
            self.status = READY_STAT | SEEK_STAT
            bm.set_inactive(False)
            return
        sector_num = self.get_sector()
        if not self._range_ok(sector_num, n):
            self._dma_error(bm)
            return
        try:
            if self.dma_cmd == "read":
                data = self.image.read(sector_num * SECTOR, limit)
                pos = 0
                for addr, length in regions:
                    bm.dma_write(addr, data[pos:pos + length])
                    pos += length
            else:
                data = b"".join(bm.dma_read(addr, length) for addr, length in regions)
                self.image.write(sector_num * SECTOR, data)
        except Exception:  # noqa: BLE001
            self._dma_error(bm)
            return
        self.set_sector(sector_num + n)
        self.nsector = 0
        self.status = READY_STAT | SEEK_STAT
        self._set_irq()
        bm.set_inactive(prd_bytes > limit)

    def _dma_error(self, bm: BmDma) -> None:
        self._abort()
        bm.set_inactive(False)
        self._set_irq()

    # -- ATAPI ----------------------------------------------------------------------------

    def _byte_count_limit(self) -> int:
        bcl = self.lcyl | (self.hcyl << 8)
        return 0xFFFE if bcl == 0xFFFF else bcl

    def _atapi_ok(self) -> None:
        self.error = 0
        self.status = READY_STAT | SEEK_STAT
        self.nsector = (self.nsector & ~7) | ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD
        self._transfer_stop()
        self._set_irq()

    def _atapi_error(self, sense_key: int, asc: int) -> None:
        self.error = sense_key << 4
        self.status = READY_STAT | ERR_STAT
        self.nsector = (self.nsector & ~7) | ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD
        self.sense_key = sense_key
        self.asc = asc
        self._transfer_stop()
        self._set_irq()

    def _atapi_reply(self, data: bytes, max_size: int) -> None:
        size = min(len(data), max_size)
        self.io_buffer[0:size] = data[:size]
        self.lba = -1
        self.packet_transfer_size = size
        self.io_buffer_size = size
        self.elementary_transfer_size = 0
        if self.atapi_dma:
            self.status = READY_STAT | SEEK_STAT | DRQ_STAT
            self.channel.bmdma.start_dma(self)
        else:
            self.status = READY_STAT | SEEK_STAT
            self.io_buffer_index = 0
            self._atapi_reply_end()

    def _cd_read_sector(self) -> bool:
        if self.image is None:
            self._atapi_error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
            return False
        if self.lba < 0 or (self.lba + 1) * CD_SECTOR > self.nb_sectors * SECTOR:
            self._atapi_error(ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR)
            return False
        try:
            data = self.image.read(self.lba * CD_SECTOR, CD_SECTOR)
        except Exception:  # noqa: BLE001
            self._atapi_error(ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR)
            return False
        if self.cd_sector_size == CD_RAW_SECTOR:
            self.io_buffer[0:CD_RAW_SECTOR] = _raw_sector(self.lba, data)
        else:
            self.io_buffer[0:CD_SECTOR] = data
        self.lba += 1
        self.io_buffer_index = 0
        return True

    def _atapi_reply_end(self) -> None:
        while self.packet_transfer_size > 0:
            if self.lba != -1 and self.io_buffer_index >= self.cd_sector_size:
                if not self._cd_read_sector():
                    return
            if self.elementary_transfer_size > 0:
                size = min(self.cd_sector_size - self.io_buffer_index,
                           self.elementary_transfer_size)
            else:
                self.nsector = (self.nsector & ~7) | ATAPI_INT_REASON_IO
                self._set_irq()
                limit = self._byte_count_limit()
                size = self.packet_transfer_size
                if size > limit:
                    limit &= ~1
                    size = limit
                self.lcyl = size & 0xFF
                self.hcyl = (size >> 8) & 0xFF
                self.elementary_transfer_size = size
                if self.lba != -1:
                    size = min(size, self.cd_sector_size - self.io_buffer_index)
            self.packet_transfer_size -= size
            self.elementary_transfer_size -= size
            self.io_buffer_index += size
            self._transfer_start(self.io_buffer_index - size, size, self._atapi_reply_end,
                                 True)
            return
        self._atapi_ok()

    def _atapi_read(self, lba: int, nb_sectors: int, sector_size: int = CD_SECTOR) -> None:
        if self.atapi_dma:
            self.lba = lba
            self.packet_transfer_size = nb_sectors * sector_size
            self.io_buffer_size = 0
            self.cd_sector_size = sector_size
            self.status = READY_STAT | SEEK_STAT | DRQ_STAT | BUSY_STAT
            self.channel.bmdma.start_dma(self)
            return
        self.lba = lba
        self.packet_transfer_size = nb_sectors * sector_size
        self.elementary_transfer_size = 0
        self.io_buffer_index = sector_size
        self.cd_sector_size = sector_size
        self.status = READY_STAT | SEEK_STAT
        self._atapi_reply_end()

    def _atapi_dma(self, bm: BmDma) -> None:
        """ATAPI data phase by DMA: a reply buffer (lba == -1) or CD sectors. The PRDs
        are walked first (as QEMU prepares each chunk before reading it), so a transfer
        they cannot hold reads nothing from the image."""
        total = self.packet_transfer_size
        regions, _ = bm.prepare(total)
        if sum(length for _, length in regions) < total:
            # PRDs too short: reset the Active bit, no interrupt
            self.status = READY_STAT | SEEK_STAT
            bm.set_inactive(False)
            return
        if self.lba == -1:
            data = bytes(self.io_buffer[0:total])
        else:
            count = total // self.cd_sector_size
            if self.image is None or ((self.lba + count) * CD_SECTOR
                                      > self.nb_sectors * SECTOR):
                bm.set_inactive(False)
                self._atapi_error(ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR)
                return
            raw = self.image.read(self.lba * CD_SECTOR, count * CD_SECTOR)
            if self.cd_sector_size == CD_RAW_SECTOR:
                data = b"".join(_raw_sector(self.lba + i, raw[i * CD_SECTOR:(i + 1) * CD_SECTOR])
                                for i in range(count))
            else:
                data = raw
        pos = 0
        for addr, length in regions:
            bm.dma_write(addr, data[pos:pos + length])
            pos += length
        self.packet_transfer_size = 0
        bm.set_inactive(False)
        self._atapi_ok()

    def _atapi_cmd(self) -> None:
        buf = bytes(self.io_buffer[0:ATAPI_PACKET_SIZE])
        op = buf[0]
        entry = _ATAPI_COMMANDS.get(op)
        flags = entry[1] if entry else 0
        if self.sense_key == UNIT_ATTENTION and not flags & _ALLOW_UA:
            # ide_atapi_cmd_check_status
            self.error = 0x20 | (UNIT_ATTENTION << 4)
            self.status = ERR_STAT
            self.nsector = 0
            self._set_irq()
            return
        if not flags & _ALLOW_UA and not self.tray_open and self.image is not None \
                and self.cdrom_changed:
            if self.cdrom_changed == 1:
                self._atapi_error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
                self.cdrom_changed = 2
            else:
                self._atapi_error(UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED)
                self.cdrom_changed = 0
            return
        if flags & _CHECK_READY and not self._media_present():
            self._atapi_error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
            return
        if entry and not flags & (_NONDATA | _CONDDATA) and self._byte_count_limit() == 0:
            self._abort()               # QEMU aborts the PACKET command, no interrupt
            return
        if entry is None:
            self._atapi_error(ILLEGAL_REQUEST, ASC_ILLEGAL_OPCODE)
            return
        entry[0](self, buf)

    def atapi_test_unit_ready(self, buf: bytes) -> None:
        self._atapi_ok()

    def atapi_request_sense(self, buf: bytes) -> None:
        data = bytearray(18)
        data[0] = 0x70 | 0x80
        data[2] = self.sense_key
        data[7] = 10
        data[12] = self.asc
        if self.sense_key == UNIT_ATTENTION:
            self.sense_key = NO_SENSE
        self._atapi_reply(bytes(data), buf[4])

    def atapi_inquiry(self, buf: bytes) -> None:
        max_len = buf[4]
        if buf[1] & 0x01:
            page = buf[2]
            out = bytearray([0x05, page, 0x00, 0x00])
            if page == 0x00:
                out += b"\x00\x83"
            elif page == 0x83:
                if len(out) + 24 > max_len:
                    self._atapi_error(ILLEGAL_REQUEST, ASC_DATA_PHASE_ERROR)
                    return
                out += b"\x02\x00\x00\x14" + _padstr8(self.serial, 20)
                if len(out) + 72 <= max_len:
                    out += (b"\x02\x01\x00\x44" + _padstr8("ATA", 8)
                            + _padstr8(self.model, 40) + _padstr8(self.serial, 20))
            else:
                self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
                return
            out[3] = len(out) - 4
        else:
            out = bytearray(36)
            out[0] = 0x05
            out[1] = 0x80
            out[3] = 0x21
            out[8:16] = _padstr8("QEMU", 8)
            out[16:32] = _padstr8("QEMU DVD-ROM", 16)
            out[32:36] = _padstr8(self.version, 4)
            out[4] = len(out) - 5
        self._atapi_reply(bytes(out), max_len)

    def atapi_read_capacity(self, buf: bytes) -> None:
        total = self.nb_sectors >> 2
        self._atapi_reply(struct.pack(">II", (total - 1) & 0xFFFFFFFF, CD_SECTOR), 8)

    def atapi_read_10(self, buf: bytes) -> None:
        nb = struct.unpack_from(">H", buf, 7)[0]
        lba = struct.unpack_from(">I", buf, 2)[0]
        if nb == 0:
            self._atapi_ok()
            return
        self._atapi_read(lba, nb)

    def atapi_read_12(self, buf: bytes) -> None:
        nb = struct.unpack_from(">I", buf, 6)[0]
        lba = struct.unpack_from(">I", buf, 2)[0]
        if nb == 0:
            self._atapi_ok()
            return
        self._atapi_read(lba, nb)

    def atapi_seek(self, buf: bytes) -> None:
        lba = struct.unpack_from(">I", buf, 2)[0]
        if lba >= self.nb_sectors >> 2:
            self._atapi_error(ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR)
            return
        self._atapi_ok()

    def atapi_start_stop_unit(self, buf: bytes) -> None:
        start = bool(buf[4] & 1)
        loej = bool(buf[4] & 2)                     # load on start, eject on !start
        if buf[4] & 0xF0:                           # power conditions: no tray movement
            self._atapi_ok()
            return
        if loej:
            if not start and not self.tray_open and self.tray_locked:
                sense = NOT_READY if self.image is not None else ILLEGAL_REQUEST
                self._atapi_error(sense, ASC_MEDIA_REMOVAL_PREVENTED)
                return
            self.tray_open = not start
        self._atapi_ok()

    def atapi_prevent_allow(self, buf: bytes) -> None:
        self.tray_locked = bool(buf[4] & 1)
        self._atapi_ok()

    def atapi_mode_sense(self, buf: bytes) -> None:
        max_len = struct.unpack_from(">H", buf, 7)[0]
        action = buf[2] >> 6
        code = buf[2] & 0x3F
        if action == 0:                              # current values
            if code == 0x01:                         # error recovery
                data = bytearray(16)
                struct.pack_into(">H", data, 0, 16 - 2)
                data[2] = 0x70
                data[8] = 0x01
                data[9] = 0x06
                data[11] = 0x05
                self._atapi_reply(bytes(data), max_len)
                return
            if code == 0x0E:                         # audio control
                data = bytearray(24)
                struct.pack_into(">H", data, 0, 24 - 2)
                data[2] = 0x70
                data[8] = 0x0E
                data[9] = 24 - 10
                self._atapi_reply(bytes(data), max_len)
                return
            if code == 0x2A:                         # CD capabilities and status
                data = bytearray(30)
                struct.pack_into(">H", data, 0, 30 - 2)
                data[2] = 0x70
                data[8] = 0x2A
                data[9] = 0x14
                data[10] = 0x3B
                data[12] = 0x71
                data[13] = 3 << 5
                data[14] = (1 << 0) | (1 << 3) | (1 << 5)
                if self.tray_locked:
                    data[14] |= 1 << 1
                data[15] = 0x00
                struct.pack_into(">H", data, 16, 704)
                data[18] = 0
                data[19] = 2
                struct.pack_into(">H", data, 20, 512)
                struct.pack_into(">H", data, 22, 704)
                self._atapi_reply(bytes(data), max_len)
                return
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        if action == 3:                              # saved values
            self._atapi_error(ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
            return
        self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)

    def atapi_read_toc(self, buf: bytes) -> None:
        max_len = struct.unpack_from(">H", buf, 7)[0]
        fmt = buf[9] >> 6
        msf = bool(buf[1] & 2)
        start_track = buf[6]
        total = self.nb_sectors >> 2

        def address(lba: int) -> bytes:
            return b"\x00" + _lba_to_msf(lba) if msf else struct.pack(">I", lba)

        if fmt == 0:                                 # TOC (cdrom_read_toc)
            if start_track > 1 and start_track != 0xAA:
                self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
                return
            out = bytearray(b"\x00\x00\x01\x01")
            if start_track <= 1:
                out += b"\x00\x14\x01\x00" + address(0)
            out += b"\x00\x16\xaa\x00" + address(total)
        elif fmt == 1:                               # multi-session: a single session
            out = bytearray(12)
            out[1:4] = b"\x0a\x01\x01"
            self._atapi_reply(bytes(out), max_len)
            return
        elif fmt == 2:                               # raw TOC (cdrom_read_toc_raw)
            out = bytearray(b"\x00\x00\x01\x01")
            out += b"\x01\x14\x00\xa0\x00\x00\x00\x00\x01\x00\x00"
            out += b"\x01\x14\x00\xa1\x00\x00\x00\x00\x01\x00\x00"
            out += b"\x01\x14\x00\xa2\x00\x00\x00" + address(total)
            out += b"\x01\x14\x00\x01\x00\x00\x00" + address(0)
        else:
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        struct.pack_into(">H", out, 0, len(out) - 2)
        self._atapi_reply(bytes(out), max_len)

    def _media_is_dvd(self) -> bool:
        return self._media_present() and self.nb_sectors > CD_MAX_SECTORS

    def _media_is_cd(self) -> bool:
        return self._media_present() and self.nb_sectors <= CD_MAX_SECTORS

    def atapi_get_configuration(self, buf: bytes) -> None:
        if buf[2] != 0 or buf[3] != 0:               # only feature 0 (profile list)
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        max_len = min(struct.unpack_from(">H", buf, 7)[0], 512)
        out = bytearray(max(20, max_len))
        if self._media_is_dvd():
            struct.pack_into(">H", out, 6, MMC_PROFILE_DVD_ROM)
        elif self._media_is_cd():
            struct.pack_into(">H", out, 6, MMC_PROFILE_CD_ROM)
        out[10] = 0x02 | 0x01                        # persistent and current
        length = 12
        for index, profile in enumerate((MMC_PROFILE_DVD_ROM, MMC_PROFILE_CD_ROM)):
            at = 12 + 4 * index
            struct.pack_into(">H", out, at, profile)
            out[at + 2] = int(out[at:at + 2] == out[6:8])
            out[11] += 4
            length += 4
        struct.pack_into(">I", out, 0, length - 4)
        self._atapi_reply(bytes(out[:length]), max_len)

    def atapi_get_event_status(self, buf: bytes) -> None:
        max_len = struct.unpack_from(">H", buf, 7)[0]
        if not buf[1] & 0x01:                        # asynchronous mode: unsupported
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        media_class = 4                              # GESN_MEDIA
        if buf[4] & (1 << media_class):
            if self.tray_open:
                media_status = 1                     # MS_TRAY_OPEN
            elif self.image is not None:
                media_status = 2                     # MS_MEDIA_PRESENT
            else:
                media_status = 0
            event = 0                                # MEC_NO_CHANGE
            if media_status != 1:
                if self.new_media_event:
                    event = 2                        # MEC_NEW_MEDIA
                    self.new_media_event = False
                elif self.eject_request_event:
                    event = 1                        # MEC_EJECT_REQUESTED
                    self.eject_request_event = False
            out = bytes([0, 4, media_class, 1 << media_class, event, media_status, 0, 0])
        else:
            out = bytes([0, 0, 0x80, 1 << media_class])   # no event available
        self._atapi_reply(out, max_len)

    def atapi_read_disc_information(self, buf: bytes) -> None:
        if buf[1] & 7:                               # types 1/2: Blu-Ray only
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        out = bytearray(34)
        out[1:9] = bytes([32, 0x0E, 1, 1, 1, 1, 0x20, 0x00])
        self._atapi_reply(bytes(out), struct.unpack_from(">H", buf, 7)[0])

    def atapi_read_dvd_structure(self, buf: bytes) -> None:
        max_len = struct.unpack_from(">H", buf, 8)[0]
        media, fmt = buf[1], buf[7]
        if fmt < 0xFF:
            if self._media_is_cd():
                self._atapi_error(ILLEGAL_REQUEST, ASC_INCOMPATIBLE_FORMAT)
                return
            if not self._media_present():
                self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
                return
        if media != 0 or not (fmt <= 0x7F or fmt == 0xFF):
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        out = bytearray(2048 + 4)
        total = self.nb_sectors >> 2
        if fmt == 0x00:                              # physical format information
            if buf[6] != 0:
                self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
                return
            if total == 0:
                self._atapi_error(ILLEGAL_REQUEST, ASC_MEDIUM_NOT_PRESENT)
                return
            out[4:8] = bytes([1, 0x0F, 1, 0])
            struct.pack_into(">III", out, 8, 0, total - 1, total - 1)
            struct.pack_into(">H", out, 0, 2048 + 2)
            size = 2048 + 4
        elif fmt == 0x01:                            # copyright: none
            struct.pack_into(">H", out, 0, 4 + 2)
            size = 8
        elif fmt == 0x04:                            # manufacturing information
            struct.pack_into(">H", out, 0, 2048 + 2)
            size = 2048 + 4
        elif fmt == 0xFF:                            # the structure list
            out[4:8] = b"\x00\x40" + struct.pack(">H", 2048 + 4)
            out[8:12] = b"\x01\x40" + struct.pack(">H", 4 + 4)
            out[12:16] = b"\x03\x40" + struct.pack(">H", 188 + 4)
            out[16:20] = b"\x04\x40" + struct.pack(">H", 2048 + 4)
            struct.pack_into(">H", out, 0, 16 + 2)
            size = 16 + 4
        else:
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
        self._atapi_reply(bytes(out[:size]), max_len)

    def atapi_set_speed(self, buf: bytes) -> None:
        self._atapi_ok()

    def atapi_mechanism_status(self, buf: bytes) -> None:
        max_len = struct.unpack_from(">H", buf, 8)[0]
        self._atapi_reply(b"\x00\x00\x00\x00\x00\x01\x00\x00", max_len)

    def atapi_read_cd(self, buf: bytes) -> None:
        nb = buf[6] << 16 | buf[7] << 8 | buf[8]
        lba = struct.unpack_from(">I", buf, 2)[0]
        if nb == 0:
            self._atapi_ok()
            return
        request = buf[9] & 0xF8
        if request == 0x00:
            self._atapi_ok()
        elif request == 0x10:
            self._atapi_read(lba, nb, CD_SECTOR)
        elif request == 0xF8:
            self._atapi_read(lba, nb, CD_RAW_SECTOR)
        else:
            self._atapi_error(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)


_CHECK_READY = 0x01
_NONDATA = 0x02
_ALLOW_UA = 0x04
_CONDDATA = 0x08        # data only if the command asks for some (reads of 0 sectors)

_ATAPI_COMMANDS: dict[int, tuple[Callable[[IdeDrive, bytes], None], int]] = {
    0x00: (IdeDrive.atapi_test_unit_ready, _CHECK_READY | _NONDATA),
    0x03: (IdeDrive.atapi_request_sense, _ALLOW_UA),
    0x12: (IdeDrive.atapi_inquiry, _ALLOW_UA),
    0x1B: (IdeDrive.atapi_start_stop_unit, _NONDATA),
    0x1E: (IdeDrive.atapi_prevent_allow, _NONDATA),
    0x25: (IdeDrive.atapi_read_capacity, _CHECK_READY),
    0x28: (IdeDrive.atapi_read_10, _CHECK_READY),
    0x2B: (IdeDrive.atapi_seek, _CHECK_READY | _NONDATA),
    0x43: (IdeDrive.atapi_read_toc, _CHECK_READY),
    0x46: (IdeDrive.atapi_get_configuration, _ALLOW_UA),
    0x4A: (IdeDrive.atapi_get_event_status, _ALLOW_UA),
    0x51: (IdeDrive.atapi_read_disc_information, _CHECK_READY),
    0x5A: (IdeDrive.atapi_mode_sense, 0),
    0xA8: (IdeDrive.atapi_read_12, _CHECK_READY),
    0xAD: (IdeDrive.atapi_read_dvd_structure, _CHECK_READY),
    0xBB: (IdeDrive.atapi_set_speed, _NONDATA),
    0xBD: (IdeDrive.atapi_mechanism_status, 0),
    0xBE: (IdeDrive.atapi_read_cd, _CHECK_READY),
}

_HD = 1
_CD = 2
_ALL = _HD | _CD
_SET_DSC = 0x100

# ATA command table: opcode -> (handler, drive kinds allowed | SET_DSC)
_ATA_COMMANDS: dict[int, tuple[Callable[[IdeDrive, int], bool], int]] = {
    CMD_DEVICE_RESET: (IdeDrive.cmd_device_reset, _CD),
    CMD_RECALIBRATE: (IdeDrive.cmd_nop, _HD | _SET_DSC),
    CMD_READ: (IdeDrive.cmd_read_pio, _ALL),
    CMD_READ_ONCE: (IdeDrive.cmd_read_pio, _HD),
    CMD_READ_EXT: (IdeDrive.cmd_read_pio, _HD),
    CMD_READ_DMA_EXT: (IdeDrive.cmd_read_dma, _HD),
    CMD_READ_NATIVE_MAX_EXT: (IdeDrive.cmd_read_native_max, _HD | _SET_DSC),
    CMD_READ_MULTIPLE_EXT: (IdeDrive.cmd_read_multiple, _HD),
    CMD_WRITE: (IdeDrive.cmd_write_pio, _HD),
    CMD_WRITE_ONCE: (IdeDrive.cmd_write_pio, _HD),
    CMD_WRITE_EXT: (IdeDrive.cmd_write_pio, _HD),
    CMD_WRITE_DMA_EXT: (IdeDrive.cmd_write_dma, _HD),
    CMD_WRITE_MULTIPLE_EXT: (IdeDrive.cmd_write_multiple, _HD),
    CMD_WRITE_VERIFY: (IdeDrive.cmd_write_pio, _HD),
    CMD_VERIFY: (IdeDrive.cmd_verify, _HD | _SET_DSC),
    CMD_VERIFY_ONCE: (IdeDrive.cmd_verify, _HD | _SET_DSC),
    CMD_VERIFY_EXT: (IdeDrive.cmd_verify, _HD | _SET_DSC),
    CMD_SEEK: (IdeDrive.cmd_nop, _HD | _SET_DSC),
    CMD_DIAGNOSE: (IdeDrive.cmd_exec_dev_diagnostic, _ALL),
    CMD_SPECIFY: (IdeDrive.cmd_nop, _HD | _SET_DSC),
    CMD_STANDBYNOW2: (IdeDrive.cmd_nop, _HD),
    CMD_IDLEIMMEDIATE2: (IdeDrive.cmd_nop, _HD),
    CMD_STANDBY2: (IdeDrive.cmd_nop, _HD),
    CMD_SETIDLE2: (IdeDrive.cmd_nop, _HD),
    CMD_CHECKPOWERMODE2: (IdeDrive.cmd_check_power_mode, _HD | _SET_DSC),
    CMD_SLEEPNOW2: (IdeDrive.cmd_nop, _HD),
    CMD_PACKET: (IdeDrive.cmd_packet, _CD),
    CMD_IDENTIFY_PACKET: (IdeDrive.cmd_identify_packet, _CD),
    CMD_SMART: (IdeDrive.cmd_smart, _HD | _SET_DSC),
    CMD_READ_MULTIPLE: (IdeDrive.cmd_read_multiple, _HD),
    CMD_WRITE_MULTIPLE: (IdeDrive.cmd_write_multiple, _HD),
    CMD_SET_MULTIPLE: (IdeDrive.cmd_set_multiple_mode, _HD | _SET_DSC),
    CMD_READ_DMA: (IdeDrive.cmd_read_dma, _HD),
    CMD_READ_DMA_ONCE: (IdeDrive.cmd_read_dma, _HD),
    CMD_WRITE_DMA: (IdeDrive.cmd_write_dma, _HD),
    CMD_WRITE_DMA_ONCE: (IdeDrive.cmd_write_dma, _HD),
    CMD_STANDBYNOW1: (IdeDrive.cmd_nop, _HD),
    CMD_IDLEIMMEDIATE: (IdeDrive.cmd_nop, _HD),
    CMD_STANDBY: (IdeDrive.cmd_nop, _HD),
    CMD_SETIDLE1: (IdeDrive.cmd_nop, _HD),
    CMD_CHECKPOWERMODE1: (IdeDrive.cmd_check_power_mode, _HD | _SET_DSC),
    CMD_SLEEPNOW1: (IdeDrive.cmd_nop, _HD),
    CMD_FLUSH_CACHE: (IdeDrive.cmd_flush_cache, _ALL),
    CMD_FLUSH_CACHE_EXT: (IdeDrive.cmd_flush_cache, _HD),
    CMD_IDENTIFY: (IdeDrive.cmd_identify, _ALL),
    CMD_SET_FEATURES: (IdeDrive.cmd_set_features, _ALL | _SET_DSC),
    0xF5: (IdeDrive.cmd_nop, _HD | _SET_DSC),      # SECURITY FREEZE LOCK (CFA_WEAR_LEVEL)
    CMD_READ_NATIVE_MAX: (IdeDrive.cmd_read_native_max, _HD | _SET_DSC),
}


class BmDma:
    """One channel's bus-master IDE registers (command, status, PRD table address)."""

    def __init__(self, channel: IdeChannel):
        self.channel = channel
        self.reset()

    def reset(self) -> None:
        self.cmd = 0
        self.status = 0
        self.addr = 0
        self.cur_addr = 0
        self.pending: IdeDrive | None = None

    def get_state(self) -> dict[str, Any]:
        """QEMU's vmstate "ide bmdma" fields and the drive waiting for the engine."""
        return {"cmd": self.cmd, "status": self.status, "addr": self.addr,
                "cur_addr": self.cur_addr,
                "pending": None if self.pending is None else self.pending.unit}

    def set_state(self, state: dict[str, Any]) -> None:
        self.cmd = state["cmd"]
        self.status = state["status"]
        self.addr = state["addr"]
        self.cur_addr = state["cur_addr"]
        unit = state["pending"]
        self.pending = None if unit is None else self.channel.drives[unit]

    def dma_read(self, addr: int, size: int) -> bytes:
        """Guest memory for the engine; what lies beyond the machine's memory reads as
        zeroes (never a short buffer)."""
        fn = self.channel.controller.dma_read
        if fn is None:
            return bytes(size)
        data = fn(addr, size)
        return data if len(data) == size else bytes(data[:size]).ljust(size, b"\0")

    def dma_write(self, addr: int, data: bytes) -> None:
        fn = self.channel.controller.dma_write
        if fn is not None:
            fn(addr, data)

    def start_dma(self, drive: IdeDrive) -> None:
        """A drive has a DMA command ready (bmdma_start_dma)."""
        self.pending = drive
        if self.status & BM_STATUS_DMAING:
            drive.run_dma(self)

    def set_inactive(self, more: bool) -> None:
        self.pending = None
        if more:
            self.status |= BM_STATUS_DMAING
        else:
            self.status &= ~BM_STATUS_DMAING

    def prepare(self, limit: int) -> tuple[list[tuple[int, int]], int]:
        """Walk the PRD table from cur_addr: (regions up to ``limit`` bytes, bytes the
        PRDs describe) - bmdma_prepare_buf, stopping at EOT or after one page."""
        regions: list[tuple[int, int]] = []
        taken = 0
        described = 0
        while True:
            # uint32 arithmetic, as QEMU's: a PRD address moved under a running engine
            # ends the walk at once instead of reading until the counter catches up
            if (self.cur_addr - self.addr) & 0xFFFFFFFF >= BMDMA_PAGE_SIZE:
                break
            prd = self.dma_read(self.cur_addr, 8)
            self.cur_addr = (self.cur_addr + 8) & 0xFFFFFFFF
            addr, size = struct.unpack("<II", prd)
            length = size & 0xFFFE or 0x10000
            described += length
            take = min(limit - taken, length)
            if take:
                regions.append((addr, take))
                taken += take
            if size & 0x80000000:
                break
        return regions, described

    # -- registers ----------------------------------------------------------------------

    def write_cmd(self, value: int) -> None:
        if (value & BM_CMD_START) != (self.cmd & BM_CMD_START):
            if not value & BM_CMD_START:
                self.status &= ~BM_STATUS_DMAING
            else:
                self.cur_addr = self.addr
                if not self.status & BM_STATUS_DMAING:
                    self.status |= BM_STATUS_DMAING
                    self.cmd = value & 0x09
                    if self.pending is not None:
                        self.pending.run_dma(self)
                    return
        self.cmd = value & 0x09

    def write_status(self, value: int) -> None:
        self.status = (value & 0x60) | (self.status & 1) | (self.status & ~value & 0x06)

    def read(self, offset: int, size: int) -> int:
        """Access at ``offset`` (0-7) in this channel's 8 BMDMA ports."""
        if offset < 4:
            if size != 1:
                return (1 << (size * 8)) - 1
            if offset == 0:
                return self.cmd
            if offset == 2:
                return self.status
            return 0xFF
        shift = (offset - 4) * 8
        return (self.addr >> shift) & ((1 << (size * 8)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if size != 1:
                return
            if offset == 0:
                self.write_cmd(value)
            elif offset == 2:
                self.write_status(value)
            return
        shift = (offset - 4) * 8
        mask = ((1 << (size * 8)) - 1) << shift
        self.addr = ((self.addr & ~mask) | ((value << shift) & mask)) & 0xFFFFFFFC


class IdeChannel:
    """One IDE bus: two drive slots, the device control register, an IRQ line."""

    def __init__(self, controller: IdeController, index: int, irq: IrqLine):
        self.controller = controller
        self.index = index
        self.irq = irq
        self.drives = [IdeDrive(self, 0, 2 * index + 1), IdeDrive(self, 1, 2 * index + 2)]
        self.unit = 0
        self.cmd = 0
        self.bmdma = BmDma(self)

    @property
    def active(self) -> IdeDrive:
        return self.drives[self.unit]

    def _any(self) -> bool:
        return self.drives[0].present or self.drives[1].present

    def raise_irq(self) -> None:
        if not self.cmd & CTRL_DISABLE_IRQ:
            self.bmdma.status |= BM_STATUS_INT
            self.irq.set(True)

    def lower_irq(self) -> None:
        self.irq.set(False)

    def get_state(self) -> dict[str, Any]:
        return {"unit": self.unit, "cmd": self.cmd, "irq_level": self.irq.level,
                "bmdma": self.bmdma.get_state(),
                "drives": [d.get_state() for d in self.drives]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.unit = state["unit"]
        self.cmd = state["cmd"]
        self.bmdma.set_state(state["bmdma"])
        for drive, drive_state in zip(self.drives, state["drives"], strict=True):
            drive.set_state(drive_state)
        self.irq.set(state["irq_level"])

    def reset(self) -> None:
        """ide_bus_reset: both drives, device control, BMDMA."""
        self.unit = 0
        self.cmd = 0
        for drive in self.drives:
            drive._reset_state()
        self.bmdma.reset()
        self.lower_irq()

    # -- command block (base+0..7) ----------------------------------------------------

    def read_reg(self, reg: int) -> int:
        s = self.active
        hob = self.cmd & CTRL_HOB
        if reg == 0:
            return 0xFF
        present = self._any()
        if reg == 7:
            ret = s.status if present and (s.unit == 0 or s.present) else 0
            self.lower_irq()
            return ret
        if not present:
            return 0
        if reg == 1:
            if s.unit and not s.present:
                return 0
            return s.hob_feature if hob else s.error
        if reg == 2:
            return s.hob_nsector if hob else s.nsector & 0xFF
        if reg == 3:
            return s.hob_sector if hob else s.sector
        if reg == 4:
            return s.hob_lcyl if hob else s.lcyl
        if reg == 5:
            return s.hob_hcyl if hob else s.hcyl
        return s.select

    def write_reg(self, reg: int, value: int) -> None:
        s = self.active
        if reg != 7 and s.status & (BUSY_STAT | DRQ_STAT):
            return
        a, b = self.drives
        if reg == 0:
            return
        self.cmd &= ~CTRL_HOB
        if reg == 1:
            a.hob_feature, b.hob_feature = a.feature, b.feature
            a.feature = b.feature = value
        elif reg == 2:
            a.hob_nsector, b.hob_nsector = a.nsector & 0xFF, b.nsector & 0xFF
            a.nsector = b.nsector = value
        elif reg == 3:
            a.hob_sector, b.hob_sector = a.sector, b.sector
            a.sector = b.sector = value
        elif reg == 4:
            a.hob_lcyl, b.hob_lcyl = a.lcyl, b.lcyl
            a.lcyl = b.lcyl = value
        elif reg == 5:
            a.hob_hcyl, b.hob_hcyl = a.hcyl, b.hcyl
            a.hcyl = b.hcyl = value
        elif reg == 6:
            a.select = b.select = value | DEV_ALWAYS_ON
            self.unit = 1 if value & DEV_SELECT else 0
        else:
            self.lower_irq()
            self.exec_cmd(value)

    def exec_cmd(self, value: int) -> None:
        s = self.active
        if s.unit and not s.present:
            return
        if s.status & (BUSY_STAT | DRQ_STAT):
            if value != CMD_DEVICE_RESET or not s.cdrom:
                return
        entry = _ATA_COMMANDS.get(value)
        kind = _CD if s.cdrom else _HD
        if entry is None or not entry[1] & kind:
            s._abort()
            s._set_irq()
            return
        s.status = READY_STAT | BUSY_STAT
        s.error = 0
        if entry[0](s, value):
            s.status &= ~BUSY_STAT
            if entry[1] & _SET_DSC and not s.error:
                s.status |= SEEK_STAT
            s._set_irq()

    # -- control block (0x3F6 / 0x376) ---------------------------------------------------

    def read_status(self) -> int:
        s = self.active
        if not self._any() or (s.unit and not s.present):
            return 0
        return s.status

    def write_control(self, value: int) -> None:
        """Device control: nIEN and SRST. QEMU resets both drives in a bottom half and
        then clears SRST in its copy of the register; here the reset happens at once."""
        start_reset = not self.cmd & CTRL_RESET and value & CTRL_RESET
        self.cmd = value
        if start_reset:
            self.bmdma.pending = None
            for drive in self.drives:
                drive.status |= BUSY_STAT
                drive._transfer_halt()
                drive._reset_state()
                drive.cmd_exec_dev_diagnostic(CMD_DIAGNOSE)
            self.cmd &= ~CTRL_RESET

    # -- data port --------------------------------------------------------------------

    def read_data(self, port: int, size: int) -> int:
        """The data port (IN of 2 or 4 bytes; a byte reads register 0's 0xFF). Kept short:
        a guest's ``rep insw`` calls it once per word."""
        if size == 1:
            return 0xFF
        s = self.drives[self.unit]
        p = s.data_ptr
        end = p + size
        if not s.status & DRQ_STAT or not s.pio_out or end > s.data_end:
            return 0
        s.data_ptr = end
        value = (_U16 if size == 2 else _U32).unpack_from(s.io_buffer, p)[0]
        if end >= s.data_end:
            s.status &= ~DRQ_STAT
            s.end_transfer()
        return value

    def write_data(self, port: int, size: int, value: int) -> None:
        if size == 1:
            return
        s = self.drives[self.unit]
        p = s.data_ptr
        end = p + size
        if not s.status & DRQ_STAT or s.pio_out or end > s.data_end:
            return
        (_U16 if size == 2 else _U32).pack_into(s.io_buffer, p, value)
        s.data_ptr = end
        if end >= s.data_end:
            s.status &= ~DRQ_STAT
            s.end_transfer()

    def read_data_block(self, count: int, size: int) -> bytes:
        """``rep insw/insd``: ``count`` items of ``size`` bytes in one call, exactly what
        ``count`` separate reads of the data port return."""
        total = count * size
        out = bytearray()
        while len(out) < total:
            s = self.active
            p = s.data_ptr
            if not s.status & DRQ_STAT or not s.pio_out or p + size > s.data_end:
                out += bytes(total - len(out))
                break
            n = min((s.data_end - p) // size, (total - len(out)) // size)
            out += s.io_buffer[p:p + n * size]
            s.data_ptr = p + n * size
            if s.data_ptr >= s.data_end:
                s.status &= ~DRQ_STAT
                s.end_transfer()
        return bytes(out)


class IdeController:
    """Both legacy channels of the PIIX3 IDE function, with their BMDMA engines.

    ``dma_read(addr, n) -> bytes`` and ``dma_write(addr, data)`` reach guest physical
    memory (the machine supplies them; without them DMA reads zeroes and writes nothing).
    The PIIX IDE PCI function maps ``bmdma_read``/``bmdma_write`` at its BAR4.
    """

    PORTS = ((0x1F0, 0x3F6), (0x170, 0x376))

    def __init__(self, bus: PortBus, irq14: IrqLine, irq15: IrqLine,
                 dma_read: DmaRead | None = None, dma_write: DmaWrite | None = None):
        self.dma_read = dma_read
        self.dma_write = dma_write
        self.channels = [IdeChannel(self, 0, irq14), IdeChannel(self, 1, irq15)]
        for channel, (base, ctrl) in zip(self.channels, self.PORTS, strict=True):
            # the data port alone (it sees every word of a PIO transfer), then the rest
            bus.register(base, 1, channel.read_data, channel.write_data,
                         f"ide{channel.index}-data")
            bus.register(base + 1, 7, self._cmd_reader(channel, base),
                         self._cmd_writer(channel, base), f"ide{channel.index}")
            bus.register(ctrl, 1, lambda port, size, c=channel: c.read_status(),
                         lambda port, size, value, c=channel: c.write_control(value & 0xFF),
                         f"ide{channel.index}-ctrl", byte_only=True)

    @staticmethod
    def _cmd_reader(channel: IdeChannel, base: int) -> Callable[[int, int], int]:
        def read(port: int, size: int) -> int:
            reg = port - base
            if size == 1:
                return channel.read_reg(reg)
            value = 0
            for i in range(size):
                r = reg + i
                value |= (channel.read_reg(r) if r < 8 else 0xFF) << (8 * i)
            return value
        return read

    @staticmethod
    def _cmd_writer(channel: IdeChannel, base: int) -> Callable[[int, int, int], None]:
        def write(port: int, size: int, value: int) -> None:
            reg = port - base
            for i in range(size):
                if reg + i < 8:
                    channel.write_reg(reg + i, (value >> (8 * i)) & 0xFF)
        return write

    def attach(self, channel: int, unit: int, drive: Any, *, cdrom: bool = False,
               serial: str | None = None, model: str | None = None) -> IdeDrive:
        """Put a disk image (a common.block node) or, with ``cdrom``, a CD-ROM (an image
        or None for an empty drive) at ``channel`` (0/1), ``unit`` (0 master/1 slave)."""
        ide = self.channels[channel].drives[unit]
        ide.attach(drive, cdrom=cdrom, serial=serial, model=model)
        return ide

    def reset(self) -> None:
        for channel in self.channels:
            channel.reset()

    def get_state(self) -> dict[str, Any]:
        """Both channels (registers, transfer in progress, BMDMA); the drives' images
        are the machine's to carry (same paths on the destination, or shared storage)."""
        return {"version": STATE_VERSION,
                "channels": [c.get_state() for c in self.channels]}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported IDE state version {state.get('version')}")
        for channel, channel_state in zip(self.channels, state["channels"], strict=True):
            channel.set_state(channel_state)

    def bmdma_read(self, offset: int, size: int) -> int:
        """Read at ``offset`` (0-15) in the BMDMA BAR."""
        channel = self.channels[(offset >> 3) & 1]
        return channel.bmdma.read(offset & 7, size)

    def bmdma_write(self, offset: int, size: int, value: int) -> None:
        channel = self.channels[(offset >> 3) & 1]
        channel.bmdma.write(offset & 7, size, value)
