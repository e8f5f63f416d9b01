"""REFERENCE WIRING for the `esp32` target: Espressif ESP32-DevKitC V4 with an ESP32-WROOM-32E.

Check every pin against the kiosk's harness drawing before flashing; change it here and rebuild.

- The USB socket (CP2102, UART0 on GPIO1/GPIO3) stays the REPL, for mpremote and the logs.
- The gateway link is UART2 on GPIO17 (TX) / GPIO16 (RX), 3.3 V TTL, crossed over to the
  gateway's UART (TX to RX). Not for WROVER modules: their PSRAM takes GPIO16/17.
- A peripheral module on a UART (cuff, glucose meter) uses UART1 remapped to GPIO32 (TX) /
  GPIO33 (RX): UART1's default pins GPIO9/10 belong to the module's flash.
- Never used: GPIO6-11 (the module's flash) and the boot-mode strapping pins GPIO0, 2, 12 and
  15. GPIO5, a strapping pin for SDIO timing only and pulled up at reset, carries the ECG chip
  select (idle high) and vitals_app's button.
- GPIO34-39 are inputs without pull-ups: none is used.
"""

from firmware.boards import App, Board, Gpio, I2c, Spi, Uart

_LINK = Uart(id=2, tx=17, rx=16, baudrate=115200, purpose="kiosk link to the gateway")

BOARD = Board(
    target="esp32",
    name="Espressif ESP32-DevKitC V4 (ESP32-WROOM-32E)",
    pin_label="GPIO",
    notes="REPL on the USB socket (UART0); gateway link on UART2.",
    apps={
        "bp_app": App(
            device_prefix="bp",
            buses={
                "link_uart": _LINK,
                "cuff_uart": Uart(id=1, tx=32, rx=33, baudrate=9600, purpose="NIBP cuff module"),
            },
            options={"journal_path": "/bp_app.journal"},  # unacked readings survive a reboot
        ),
        "ecg_app": App(
            device_prefix="ecg",
            buses={
                # 500 SPS x 2 leads streams about 4 kB/s: the ECG link runs faster than the others.
                "link_uart": Uart(
                    id=2,
                    tx=17,
                    rx=16,
                    baudrate=921600,
                    purpose="kiosk link to the gateway; set the gateway port to 921600",
                ),
                "spi": Spi(
                    id=2,
                    sck=18,
                    mosi=23,
                    miso=19,
                    baudrate=1000000,
                    polarity=0,
                    phase=1,
                    purpose="ADS1292R ECG front end",
                ),
                "cs": Gpio(pin=5, output=True, initial=1, purpose="ADS1292R chip select, active low"),
                "drdy": Gpio(pin=4, output=False, pull_up=True, purpose="ADS1292R DRDY, falls per sample"),
            },
        ),
        "glucose_app": App(
            device_prefix="glu",
            buses={
                "link_uart": _LINK,
                "meter_uart": Uart(id=1, tx=32, rx=33, baudrate=9600, purpose="glucose strip-meter module"),
            },
            # last meter record handed over; unacked readings kept on flash across a reboot
            options={"state_path": "/glucose_app.index", "journal_path": "/glucose_app.journal"},
        ),
        "weight_app": App(
            device_prefix="ws",
            buses={
                "link_uart": _LINK,
                "sck": Gpio(
                    pin=26, output=True, initial=0, purpose="HX711 PD_SCK; high > 60 us powers it down"
                ),
                "dout": Gpio(
                    pin=25, output=False, pull_up=True, purpose="HX711 DOUT; falls when a sample is ready"
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
                    scl=22,
                    sda=21,
                    freq=100000,
                    purpose="MAX30102 at 0x57, MLX90614 at 0x5A; 100 kHz for SMBus",
                ),
            },
            options={"journal_path": "/vitals_app.journal"},  # unacked readings survive a reboot
            fixed_pins={"spo2_int": 4, "button": 5},  # vitals_app.BOARD: MAX30102 INT, "measure" button
        ),
    },
)
