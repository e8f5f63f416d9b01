"""REFERENCE WIRING for the `rp2` target: Raspberry Pi Pico (RP2040).

Check every pin against the kiosk's harness drawing before flashing; change it here and rebuild.

- The USB socket is the REPL (USB CDC, /dev/ttyACM0 on the technician's laptop).
- The gateway link is UART0 on GP0 (TX, pin 1) / GP1 (RX, pin 2), 3.3 V TTL, crossed over to
  the gateway's UART.
- A peripheral module on a UART (cuff, glucose meter) uses UART1 on GP4 (TX, pin 6) /
  GP5 (RX, pin 7).
- vitals_app drives GP4 and GP5 itself (MAX30102 INT, "measure" button; numbers fixed in the
  app), so a vitals board has nothing on UART1.
- On a Pico 2 (RP2350) the bytecode and these launchers work as they are; only a --native
  build would need armv7emsp, which this target does not make.
"""

from firmware.boards import App, Board, Gpio, I2c, Spi, Uart

_LINK = Uart(id=0, tx=0, rx=1, baudrate=115200, purpose="kiosk link to the gateway")

BOARD = Board(
    target="rp2",
    name="Raspberry Pi Pico (RP2040)",
    pin_label="GP",
    notes="REPL on USB; gateway link on UART0.",
    apps={
        "bp_app": App(
            device_prefix="bp",
            buses={
                "link_uart": _LINK,
                "cuff_uart": Uart(id=1, tx=4, rx=5, baudrate=9600, purpose="NIBP cuff module"),
            },
            options={"journal_path": "/bp_app.journal"},  # unacked readings survive a reboot
        ),
        "ecg_app": App(
            device_prefix="ecg",
            buses={
                # 500 SPS x 2 leads streams about 4 kB/s: the ECG link runs faster than the others.
                "link_uart": Uart(
                    id=0,
                    tx=0,
                    rx=1,
                    baudrate=921600,
                    purpose="kiosk link to the gateway; set the gateway port to 921600",
                ),
                "spi": Spi(
                    id=0,
                    sck=18,
                    mosi=19,
                    miso=16,
                    baudrate=1000000,
                    polarity=0,
                    phase=1,
                    purpose="ADS1292R ECG front end",
                ),
                "cs": Gpio(pin=17, output=True, initial=1, purpose="ADS1292R chip select, active low"),
                "drdy": Gpio(pin=20, output=False, pull_up=True, purpose="ADS1292R DRDY, falls per sample"),
            },
        ),
        "glucose_app": App(
            device_prefix="glu",
            buses={
                "link_uart": _LINK,
                "meter_uart": Uart(id=1, tx=4, rx=5, baudrate=9600, purpose="glucose strip-meter module"),
            },
            # last meter record handed over; unacked readings kept on flash across a reboot
            options={"state_path": "/glucose_app.index", "journal_path": "/glucose_app.journal"},
        ),
        "weight_app": App(
            device_prefix="ws",
            buses={
                "link_uart": _LINK,
                "sck": Gpio(
                    pin=15, output=True, initial=0, purpose="HX711 PD_SCK; high > 60 us powers it down"
                ),
                "dout": Gpio(
                    pin=14, output=False, pull_up=True, purpose="HX711 DOUT; falls when a sample is ready"
                ),
            },
            options={"journal_path": "/weight_app.journal"},  # unacked readings survive a reboot
        ),
        "vitals_app": App(
            device_prefix="vs",
            buses={
                "link_uart": _LINK,
                "i2c": I2c(
                    id=0,
                    scl=9,
                    sda=8,
                    freq=100000,
                    purpose="MAX30102 at 0x57, MLX90614 at 0x5A; 100 kHz for SMBus",
                ),
            },
            options={"journal_path": "/vitals_app.journal"},  # unacked readings survive a reboot
            fixed_pins={"spo2_int": 4, "button": 5},  # vitals_app.BOARD: MAX30102 INT, "measure" button
        ),
    },
)
