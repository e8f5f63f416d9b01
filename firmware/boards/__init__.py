"""Board configurations for `firmware/build.py`: which pins each board application gets.

One module per build target (`esp32.py`, `rp2.py`) defines `BOARD`, a `Board` naming the
development board the wiring was drawn for and, per application module (`bp_app`,
`glucose_app`, ...), the buses and options its `run()` receives. The build turns each entry into
that board's `main.py`, a launcher of a few lines, and checks that `run()` takes exactly these
parameters, so a launcher that would fail on the board fails the build instead.

These files are CPython data for the build, never flashed. The wiring in them is the project's
REFERENCE wiring: check it against the kiosk's harness drawing before flashing a board, and
change it here (then rebuild), not in the main.py on the board.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["App", "Board", "Bus", "Gpio", "I2c", "Option", "Spi", "Uart"]

Option = str | int | float | bool | None


@dataclass(frozen=True, kw_only=True)
class Uart:
    """A hardware UART. Reads never block (timeout=0), as the drivers expect."""

    id: int
    tx: int
    rx: int
    baudrate: int
    purpose: str

    imports = ("UART", "Pin")

    def pins(self) -> tuple[int, ...]:
        return (self.tx, self.rx)

    def unit(self) -> str | None:
        return "UART%d" % self.id

    def constructor(self) -> str:
        return "UART(%d, baudrate=%d, tx=Pin(%d), rx=Pin(%d), timeout=0)" % (
            self.id,
            self.baudrate,
            self.tx,
            self.rx,
        )

    def wiring(self, pin: str) -> str:
        return "UART%d TX %s%d, RX %s%d, %d baud" % (self.id, pin, self.tx, pin, self.rx, self.baudrate)


@dataclass(frozen=True, kw_only=True)
class I2c:
    """A hardware I2C bus (controller)."""

    id: int
    scl: int
    sda: int
    freq: int
    purpose: str

    imports = ("I2C", "Pin")

    def pins(self) -> tuple[int, ...]:
        return (self.scl, self.sda)

    def unit(self) -> str | None:
        return "I2C%d" % self.id

    def constructor(self) -> str:
        return "I2C(%d, scl=Pin(%d), sda=Pin(%d), freq=%d)" % (self.id, self.scl, self.sda, self.freq)

    def wiring(self, pin: str) -> str:
        return "I2C%d SCL %s%d, SDA %s%d, %d Hz" % (self.id, pin, self.scl, pin, self.sda, self.freq)


@dataclass(frozen=True, kw_only=True)
class Spi:
    """A hardware SPI bus; chip selects are separate `Gpio` outputs."""

    id: int
    sck: int
    mosi: int
    miso: int
    baudrate: int
    polarity: int = 0
    phase: int = 0
    purpose: str

    imports = ("SPI", "Pin")

    def pins(self) -> tuple[int, ...]:
        return (self.sck, self.mosi, self.miso)

    def unit(self) -> str | None:
        return "SPI%d" % self.id

    def constructor(self) -> str:
        return "SPI(%d, baudrate=%d, polarity=%d, phase=%d, sck=Pin(%d), mosi=Pin(%d), miso=Pin(%d))" % (
            self.id,
            self.baudrate,
            self.polarity,
            self.phase,
            self.sck,
            self.mosi,
            self.miso,
        )

    def wiring(self, pin: str) -> str:
        return "SPI%d SCK %s%d, MOSI %s%d, MISO %s%d, %d Hz, mode %d" % (
            self.id,
            pin,
            self.sck,
            pin,
            self.mosi,
            pin,
            self.miso,
            self.baudrate,
            self.polarity * 2 + self.phase,
        )


@dataclass(frozen=True, kw_only=True)
class Gpio:
    """One pin: an output with its idle level (chip select, clock) or an input (data ready)."""

    pin: int
    output: bool
    initial: int = 1  # outputs only: the level the pin is driven to at start
    pull_up: bool = False  # inputs only
    purpose: str

    imports = ("Pin",)

    def pins(self) -> tuple[int, ...]:
        return (self.pin,)

    def unit(self) -> str | None:
        return None

    def constructor(self) -> str:
        if self.output:
            return "Pin(%d, Pin.OUT, value=%d)" % (self.pin, self.initial)
        if self.pull_up:
            return "Pin(%d, Pin.IN, Pin.PULL_UP)" % self.pin
        return "Pin(%d, Pin.IN)" % self.pin

    def wiring(self, pin: str) -> str:
        if self.output:
            return "%s%d output, idle %s" % (pin, self.pin, "high" if self.initial else "low")
        return "%s%d input%s" % (pin, self.pin, ", pull-up" if self.pull_up else "")


Bus = Uart | I2c | Spi | Gpio


@dataclass(frozen=True, kw_only=True)
class App:
    """How one board application is started: `run(device_id=..., <buses>..., <options>...)`.

    `buses` maps a parameter of the app's `run()` to the peripheral built for it; `options` are
    further keyword arguments (a journal file on flash, say). `fixed_pins` lists pins the app
    module takes by itself, not through `run()`, so that the wiring check and the main.py
    comment know them. The device id the board announces in its hello is `device_prefix` + "-"
    + the chip's unique id in hex.
    """

    device_prefix: str
    buses: Mapping[str, Bus]
    options: Mapping[str, Option] = field(default_factory=dict)
    fixed_pins: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Board:
    """The development board a target's reference wiring is drawn for."""

    target: str
    name: str
    pin_label: str  # how the board's silkscreen names a GPIO: "GPIO" (ESP32), "GP" (Pico)
    notes: str = ""
    apps: Mapping[str, App]
