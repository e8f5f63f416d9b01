"""A simulated ESP32 ROM serial bootloader that the real `esptool` flashes, over `socket://`.

A technician writes a full image to an ESP32 with `esptool --chip esp32 --port /dev/ttyUSB0
--no-stub write-flash ...`: esptool resets the chip into its ROM's UART download mode and talks
to the ROM's loader. Here the same esptool reaches this simulator with
`--port socket://127.0.0.1:PORT` (pyserial's URL handler). On a socket esptool does not reset
the chip (it cannot toggle DTR/RTS over TCP; `connect()` switches to `no-reset`), so the board
behaves as one whose BOOT button is held at power-on: it is in download mode when the tool
connects. A bare pty would not do: pyserial's modem-line ioctls on a pty fail.

What is simulated, from esptool's own source (esptool 5.x: `loader.py` `ESPLoader.command`,
`check_command`, `sync`, `flash_begin`, `flash_block`, `flash_md5sum`, `flash_spi_attach`,
`flash_set_parameters`, `run_spiflash_command`; `targets/esp32.py` `ESP32ROM`) and Espressif's
"Serial Protocol" page (docs/en/advanced-topics/serial-protocol.rst in the esptool repository):

- SLIP framing both ways (0xC0 ends, 0xDB 0xDC / 0xDB 0xDD escapes).
- A request is `<BBHI`: direction 0, command, payload length, checksum; then the payload.
  A response is `<BBHI`: direction 1, the same command, data length, value; then data that
  ends in the ESP32 ROM's four status bytes (status 0/1, error code, two reserved).
- The ROM commands esptool uses with `--no-stub` (table `COMMANDS`): SYNC (answered eight
  times, as esptool reads seven more answers after the first), READ_REG and WRITE_REG (a small
  register file, `ESP32_REGISTERS`: the chip-detect magic, the eFuse words esptool decodes into
  chip revision, package, features and MAC, the UART divider and RTC calibration it derives the
  crystal from, and the SPI controller's user-command registers, through which esptool reads
  the flash chip's JEDEC id and SFDP table), SPI_SET_PARAMS, SPI_ATTACH, FLASH_BEGIN (erases
  the region, whole 4 KB sectors), FLASH_DATA (length, sequence and the 0xEF-seeded XOR
  checksum are checked; bytes are programmed as NOR flash does, AND into erased cells),
  FLASH_END, SPI_FLASH_MD5 (32 hex digits, as the ROM answers; the stub answers 16 raw bytes),
  READ_FLASH_SLOW (64 bytes a command) and CHANGE_BAUDRATE (acknowledged: a socket has no baud
  rate).
- Anything else, including GET_SECURITY_INFO (esptool asks; the ESP32 ROM predates it), is
  answered with status 1, error 0x05 "received message is invalid". RAM download (MEM_BEGIN,
  the first step of uploading esptool's flasher stub) is refused with error 0x06: the
  simulator does not execute Xtensa code, so esptool must run with `--no-stub`.

The flash is a `bytearray` (4 MB by default, erased to 0xFF), optionally loaded from and saved
to a file; `read_flash(offset, size)` shows what landed where. Two faults for tests:
`corrupt_at=ADDRESS` flips bit 0 of the byte at ADDRESS and of the byte after it in the
FLASH_DATA payload that carries them, after the checksum check: two flips of the same bit
leave the 8-bit XOR checksum unchanged, the kind of corruption only the MD5 check at the end
catches. `silent=True` accepts the connection and never answers: a board that is not in
download mode.

    with EspRomBoard() as board:
        subprocess.run(["esptool", "--chip", "esp32", "--port", board.url, "--no-stub",
                        "write-flash", "0x1000", "firmware.bin"], check=True)
        assert board.read_flash(0x1000, size) == image
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar

__all__ = [
    "COMMANDS",
    "ESP32_REGISTERS",
    "EspRom",
    "EspRomBoard",
    "SlipDecoder",
    "slip_encode",
    "synthetic_esp32_image",
]

# --- SLIP -----------------------------------------------------------------------------------------

SLIP_END = 0xC0
SLIP_ESC = 0xDB
SLIP_ESC_END = 0xDC
SLIP_ESC_ESC = 0xDD


def slip_encode(packet: bytes) -> bytes:
    body = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Bytes in, whole packets out. Bytes outside a packet (line noise, a boot log) are dropped."""

    def __init__(self) -> None:
        self._packet: bytearray | None = None
        self._escape = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        for byte in data:
            if self._packet is None:
                if byte == SLIP_END:
                    self._packet = bytearray()
                continue
            if self._escape:
                self._escape = False
                if byte == SLIP_ESC_END:
                    self._packet.append(SLIP_END)
                elif byte == SLIP_ESC_ESC:
                    self._packet.append(SLIP_ESC)
                else:  # an invalid escape: drop the packet, as the ROM does
                    self._packet = None
                continue
            if byte == SLIP_ESC:
                self._escape = True
            elif byte == SLIP_END:
                if self._packet:
                    yield bytes(self._packet)
                    self._packet = None
                else:  # two 0xC0 in a row: the second one starts the packet
                    self._packet = bytearray()
            else:
                self._packet.append(byte)


# --- the ROM loader's commands and answers --------------------------------------------------------

# Command codes (esptool loader.py ESPLoader.ESP_CMDS; "Serial Protocol", Commands).
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
SPI_FLASH_MD5 = 0x13

COMMANDS = {
    FLASH_BEGIN: "FLASH_BEGIN",
    FLASH_DATA: "FLASH_DATA",
    FLASH_END: "FLASH_END",
    MEM_BEGIN: "MEM_BEGIN",
    MEM_END: "MEM_END",
    MEM_DATA: "MEM_DATA",
    SYNC: "SYNC",
    WRITE_REG: "WRITE_REG",
    READ_REG: "READ_REG",
    SPI_SET_PARAMS: "SPI_SET_PARAMS",
    SPI_ATTACH: "SPI_ATTACH",
    READ_FLASH_SLOW: "READ_FLASH_SLOW",
    CHANGE_BAUDRATE: "CHANGE_BAUDRATE",
    SPI_FLASH_MD5: "SPI_FLASH_MD5",
}

# ROM loader error codes ("Serial Protocol", ROM Loader Errors).
ERR_INVALID_MESSAGE = 0x05
ERR_FAILED_TO_ACT = 0x06
ERR_INVALID_CRC = 0x07
ERR_FLASH_READ_LENGTH = 0x0A

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + 32 * b"\x55"
SYNC_ANSWERS = 8  # esptool's sync() reads the first answer, then seven more
SYNC_VALUE = 0x20120707  # non-zero: a ROM, not the flasher stub (esptool: sync_stub_detected)
CHECKSUM_SEED = 0xEF
SECTOR = 0x1000
READ_FLASH_SLOW_BLOCK = 64

# SPI0 controller, user-command registers (esptool ESP32ROM.SPI_REG_BASE and the *_OFFS).
SPI_BASE = 0x3FF42000
SPI_CMD = SPI_BASE + 0x00
SPI_ADDR = SPI_BASE + 0x04
SPI_USR = SPI_BASE + 0x1C
SPI_USR1 = SPI_BASE + 0x20
SPI_USR2 = SPI_BASE + 0x24
SPI_MISO_DLEN = SPI_BASE + 0x2C
SPI_W0 = SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
SPI_USR_ADDR = 1 << 30
SPI_USR1_ADDR_LEN_SHIFT = 26

EFUSE_BASE = 0x3FF5A000  # ESP32ROM.EFUSE_RD_REG_BASE; word n at EFUSE_BASE + 4 * n

# The register values esptool reads from an ESP32, and what it makes of them. One simulated
# chip: an ESP32-D0WD-V3 (revision v3.0), dual core, 40 MHz crystal, MAC 24:0a:c4:5e:00:01.
ESP32_REGISTERS: dict[int, int] = {
    0x40001000: 0x00F01D83,  # CHIP_DETECT_MAGIC_REG_ADDR: ESP32ROM.MAGIC_VALUE
    EFUSE_BASE + 0x00: 0x00000000,  # word 0: no read protection, FLASH_CRYPT_CNT 0 (not encrypted)
    EFUSE_BASE + 0x04: 0xC45E0001,  # word 1: MAC bytes 2-5 (read_mac packs words 2, 1 big-endian)
    EFUSE_BASE + 0x08: 0x0000240A,  # word 2: MAC bytes 0-1 (the top byte would be its CRC)
    EFUSE_BASE + 0x0C: (1 << 15) | (1 << 9),  # word 3: revision bit 0; package 1 (D0WD); BT on
    EFUSE_BASE + 0x10: 100,  # word 4: CK8M frequency 100 (ROM crystal estimate 40 MHz); VDD_SPI unset
    EFUSE_BASE + 0x14: 1 << 20,  # word 5: revision bit 1; minor 0; default SPI pads (all 0)
    EFUSE_BASE + 0x18: 0x00000000,  # word 6: coding scheme none; ABS_DONE (secure boot) off
    0x3FF6607C: 0x80000000,  # APB_CTL_DATE: revision bit 2 -> with words 3 and 5, major revision 3
    0x3FF40014: 347,  # UART_CLKDIV at 115200 Bd: 347 * 115200 = 39.97 MHz -> "40MHz" crystal
    0x3FF5F06C: 1024 << 7,  # RTCCALICFG1: 1024 * 15625 * 100 / 40 = 40 MHz (change_baud's correction)
}

# The flash chip behind SPI0: JEDEC id (Winbond W25Q32, 4 MB) and its SFDP table's start.
JEDEC_MANUFACTURER = 0xEF
JEDEC_TYPE = 0x40
SFDP_TABLE = b"SFDP\x06\x01\x00\xff" + b"\x00\x06\x01\x10\x80\x00\x00\xff" + bytes(16)


def _checksum(data: bytes | bytearray) -> int:
    state = CHECKSUM_SEED
    for byte in data:
        state ^= byte
    return state


class RomError(Exception):
    """A command the ROM answers with status 1 and `code`."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class _FlashWrite:
    offset: int
    blocks: int
    block_size: int
    received: set[int] = field(default_factory=set)


class EspRom:
    """The ROM loader's state: registers, the SPI flash, the current flash write. No I/O:
    `handle(packet)` takes one decoded request and returns the decoded answers."""

    def __init__(self, *, flash_size: int = 4 * 1024 * 1024, corrupt_at: int | None = None) -> None:
        if flash_size & (flash_size - 1) or not SECTOR <= flash_size <= 16 * 1024 * 1024:
            raise ValueError("flash_size must be a power of two from 4 KB to 16 MB")
        self.flash = bytearray(b"\xff" * flash_size)
        self.registers = dict(ESP32_REGISTERS)
        self.corrupt_at = corrupt_at
        self.commands: list[str] = []  # every command received, by name, in order
        self.spi_attached = False
        self.spi_params: tuple[int, ...] | None = None
        self.baud = 115200
        self.ran_user_code = False
        self._write: _FlashWrite | None = None

    # --- one request ----------------------------------------------------------------------

    def handle(self, packet: bytes) -> list[bytes]:
        if len(packet) < 8 or packet[0] != 0x00:
            return []  # not a request: the ROM ignores it
        _, op, size, checksum = struct.unpack("<BBHI", packet[:8])
        payload = packet[8:]
        self.commands.append(COMMANDS.get(op, f"0x{op:02x}"))
        try:
            if len(payload) != size:
                raise RomError(ERR_INVALID_MESSAGE, "length field does not match the payload")
            handler = self._HANDLERS.get(op)
            if handler is None:
                raise RomError(ERR_INVALID_MESSAGE, "not a command of the ESP32 ROM")
            value, data, times = handler(self, payload, checksum)
        except RomError as exc:
            return [self._answer(op, 0, b"", status=1, error=exc.code)]
        return [self._answer(op, value, data)] * times

    @staticmethod
    def _answer(op: int, value: int, data: bytes, *, status: int = 0, error: int = 0) -> bytes:
        body = data + bytes([status, error, 0, 0])  # the ESP32 ROM's four status bytes
        return struct.pack("<BBHI", 0x01, op, len(body), value) + body

    @staticmethod
    def _words(payload: bytes, count: int) -> tuple[int, ...]:
        if len(payload) != 4 * count:
            raise RomError(ERR_INVALID_MESSAGE, f"expected {count} words")
        return struct.unpack(f"<{count}I", payload)

    # --- commands -------------------------------------------------------------------------

    def _sync(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        if payload != SYNC_PAYLOAD:
            raise RomError(ERR_INVALID_MESSAGE, "not the sync pattern")
        return SYNC_VALUE, b"", SYNC_ANSWERS

    def _read_reg(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        (address,) = self._words(payload, 1)
        return self.registers.get(address, 0), b"", 1

    def _write_reg(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        if not payload or len(payload) % 16:
            raise RomError(ERR_INVALID_MESSAGE, "WRITE_REG takes (address, value, mask, delay) words")
        for offset in range(0, len(payload), 16):
            address, value, mask, _delay_us = struct.unpack_from("<4I", payload, offset)
            old = self.registers.get(address, 0)
            self.registers[address] = (old & ~mask & 0xFFFFFFFF) | (value & mask)
            if address == SPI_CMD and self.registers[address] & SPI_CMD_USR:
                self._spi_user_command()
        return 0, b"", 1

    def _spi_set_params(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        self.spi_params = self._words(payload, 6)  # id, total size, block, sector, page, status mask
        return 0, b"", 1

    def _spi_attach(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        self._words(payload, 2)  # pin configuration (0: default pads) + the ROM's "is legacy" word
        self.spi_attached = True
        return 0, b"", 1

    def _flash_begin(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        # The ESP32 ROM takes four words (esptool adds a fifth, "encrypted", for later chips only).
        erase_size, blocks, block_size, offset = self._words(payload, 4)
        if not self.spi_attached:
            raise RomError(ERR_FAILED_TO_ACT, "SPI flash not attached (SPI_ATTACH first)")
        end = offset + max(erase_size, blocks * block_size)
        if end > len(self.flash) or (block_size == 0 and blocks):
            raise RomError(ERR_INVALID_MESSAGE, "region outside the flash")
        first = offset - offset % SECTOR
        last = -(-(offset + erase_size) // SECTOR) * SECTOR
        self.flash[first:last] = b"\xff" * (last - first)
        self._write = _FlashWrite(offset=offset, blocks=blocks, block_size=block_size)
        return 0, b"", 1

    def _flash_data(self, payload: bytes, checksum: int) -> tuple[int, bytes, int]:
        if len(payload) < 16:
            raise RomError(ERR_INVALID_MESSAGE, "FLASH_DATA without its header")
        length, seq, _, _ = struct.unpack_from("<4I", payload)
        data = bytearray(payload[16:])
        write = self._write
        if write is None:
            raise RomError(ERR_FAILED_TO_ACT, "FLASH_DATA before FLASH_BEGIN")
        if length != len(data) or length != write.block_size or seq >= write.blocks:
            raise RomError(ERR_INVALID_MESSAGE, "block length or sequence number out of range")
        if _checksum(data) != checksum & 0xFF:
            raise RomError(ERR_INVALID_CRC, "checksum does not match the data")
        address = write.offset + seq * write.block_size
        if self.corrupt_at is not None:
            for target in (self.corrupt_at, self.corrupt_at + 1):
                if address <= target < address + length:
                    data[target - address] ^= 0x01  # same bit twice: the XOR checksum cannot see it
        # NOR flash: programming only clears bits of erased (0xFF) cells.
        for index, byte in enumerate(data):
            self.flash[address + index] &= byte
        write.received.add(seq)
        return 0, b"", 1

    def _flash_end(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        (stay_in_loader,) = self._words(payload, 1)
        self._write = None
        self.ran_user_code = stay_in_loader == 0 or self.ran_user_code
        return 0, b"", 1

    def _spi_flash_md5(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        address, size, _, _ = self._words(payload, 4)
        if address + size > len(self.flash):
            raise RomError(ERR_FLASH_READ_LENGTH, "region outside the flash")
        digest = hashlib.md5(self.flash[address : address + size]).hexdigest()
        return 0, digest.encode(), 1  # the ROM answers 32 hex digits; the stub 16 raw bytes

    def _read_flash_slow(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        address, size = self._words(payload, 2)
        if size > READ_FLASH_SLOW_BLOCK or address + size > len(self.flash):
            raise RomError(ERR_FLASH_READ_LENGTH, "at most 64 bytes inside the flash")
        data = bytes(self.flash[address : address + size])
        return 0, data + b"\xff" * (READ_FLASH_SLOW_BLOCK - size), 1  # always a 64-byte buffer

    def _change_baudrate(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        self.baud, _ = self._words(payload, 2)  # the ROM answers at the old rate, then switches
        return 0, b"", 1

    def _mem_begin(self, payload: bytes, _checksum: int) -> tuple[int, bytes, int]:
        raise RomError(ERR_FAILED_TO_ACT, "RAM download (the flasher stub) is not simulated: --no-stub")

    _HANDLERS: ClassVar[dict[int, Callable[[EspRom, bytes, int], tuple[int, bytes, int]]]] = {
        SYNC: _sync,
        READ_REG: _read_reg,
        WRITE_REG: _write_reg,
        SPI_SET_PARAMS: _spi_set_params,
        SPI_ATTACH: _spi_attach,
        FLASH_BEGIN: _flash_begin,
        FLASH_DATA: _flash_data,
        FLASH_END: _flash_end,
        SPI_FLASH_MD5: _spi_flash_md5,
        READ_FLASH_SLOW: _read_flash_slow,
        CHANGE_BAUDRATE: _change_baudrate,
        MEM_BEGIN: _mem_begin,
    }

    # --- the flash chip behind the SPI controller -----------------------------------------

    def _spi_user_command(self) -> None:
        """esptool's run_spiflash_command: opcode in USR2's low byte, address in ADDR's top
        bits, up to 32 bits read back into W0 (first byte received in the low byte)."""
        regs = self.registers
        opcode = regs.get(SPI_USR2, 0) & 0xFF
        address = None
        if regs.get(SPI_USR, 0) & SPI_USR_ADDR:
            addr_bits = ((regs.get(SPI_USR1, 0) >> SPI_USR1_ADDR_LEN_SHIFT) & 0x3F) + 1
            address = regs.get(SPI_ADDR, 0) >> (32 - addr_bits)
        capacity = len(self.flash).bit_length() - 1  # JEDEC capacity byte: log2(size)
        if opcode == 0x9F:  # RDID
            reply = bytes([JEDEC_MANUFACTURER, JEDEC_TYPE, capacity])
        elif opcode == 0x5A and address is not None:  # RDSFDP
            reply = SFDP_TABLE[address : address + 4].ljust(4, b"\xff")
        else:  # status reads (0x05, 0x35, 0x15) read 0; resets, write enables, WRSR do nothing here
            reply = b""
        miso_bits = regs.get(SPI_MISO_DLEN, 0) + 1
        word = int.from_bytes(reply[:4].ljust(4, b"\x00"), "little") & ((1 << min(miso_bits, 32)) - 1)
        regs[SPI_W0] = word
        regs[SPI_CMD] = regs[SPI_CMD] & ~SPI_CMD_USR  # done


# --- the board on a TCP port ----------------------------------------------------------------------


class EspRomBoard:
    """An ESP32 held in ROM download mode, reachable as `socket://127.0.0.1:<port>`."""

    def __init__(
        self,
        *,
        flash_size: int = 4 * 1024 * 1024,
        flash_file: Path | None = None,
        corrupt_at: int | None = None,
        silent: bool = False,
    ) -> None:
        self.rom = EspRom(flash_size=flash_size, corrupt_at=corrupt_at)
        self.flash_file = flash_file
        if flash_file is not None and flash_file.exists():
            data = flash_file.read_bytes()[:flash_size]
            self.rom.flash[: len(data)] = data
        self.silent = silent
        self.connections = 0  # TCP connections accepted: a tool that never connected leaves 0
        self.bytes_received = 0
        self.port = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """What `esptool --port` takes."""
        return f"socket://127.0.0.1:{self.port}"

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return list(self.rom.commands)

    def read_flash(self, offset: int, size: int) -> bytes:
        with self._lock:
            return bytes(self.rom.flash[offset : offset + size])

    def start(self) -> EspRomBoard:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"esp-rom-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        if self.flash_file is not None:
            with self._lock:
                self.flash_file.write_bytes(bytes(self.rom.flash))

    def __enter__(self) -> EspRomBoard:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with contextlib.closing(client):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.settimeout(0.1)
                self._talk(client)

    def _talk(self, client: socket.socket) -> None:
        """One tool's session, until it hangs up. A new session starts a new SLIP stream."""
        decoder = SlipDecoder()
        while not self._stopping.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.bytes_received += len(data)
            if self.silent:
                continue
            out = bytearray()
            for packet in decoder.feed(data):
                with self._lock:
                    answers = self.rom.handle(packet)
                for answer in answers:
                    out += slip_encode(answer)
            if out:
                try:
                    client.sendall(out)
                except OSError:
                    return


# --- a stand-in image ------------------------------------------------------------------------------


def synthetic_esp32_image(size: int, *, seed: int = 0) -> bytes:
    """A valid ESP32 app image of about `size` bytes (not one that runs): the 8-byte header
    (magic 0xE9, one segment, flash mode/size/freq, entry), the 16-byte extended header (chip id
    0 = ESP32, append-digest 1), one DRAM segment of pseudo-random bytes, the XOR checksum at
    the end of the 16-byte-aligned padding, then the SHA-256 of all before it. For tests, where
    building MicroPython itself (ESP-IDF) is not possible; `esptool image-info` accepts it."""
    body_size = max(16, size - 8 - 16 - 8 - 16 - 32) // 4 * 4
    stream = hashlib.shake_256(b"kiosk-esp32-image-%d" % seed).digest(body_size)
    header = struct.pack("<BBBBI", 0xE9, 1, 0x02, 0x20, 0x40080400)  # DIO, 4MB/40m, entry in IRAM
    extended = struct.pack("<BBBBHBHH4BB", 0xEE, 0, 0, 0, 0, 0, 0, 0xFFFF, 0, 0, 0, 0, 1)
    segment = struct.pack("<II", 0x3FFB0000, body_size) + stream
    image = header + extended + segment
    padding = 15 - len(image) % 16
    image += b"\x00" * padding + bytes([_checksum(stream)])
    return image + hashlib.sha256(image).digest()
