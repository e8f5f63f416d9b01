# ruff: noqa: F821  (include, module: names the MicroPython manifest tool defines)
# Freeze manifest: the kiosk board firmware built into an ESP32 MicroPython image.
#
# For technicians who build a whole image instead of copying .mpy files. In a checkout of
# MicroPython (1.19 or later), ports/esp32, with ESP-IDF set up:
#
#     make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/kiosk-edge/firmware/manifest_esp32.py
#
# then flash the image as the port README says. Paths here are relative to this file.
#
# main.py is not frozen: copy build/firmware/esp32/<app>/main.py to the board's filesystem as for
# an .mpy install (python -m firmware.build --target esp32). Leave no .py or .mpy copy of these
# modules on the filesystem: it would be imported instead of the frozen one.
#
# Keep this list equal to the board modules firmware/build.py compiles (every firmware/*.py but
# __init__.py, build.py and the manifests): tests/component/test_firmware_build.py checks it.

# The port's own manifest first: it freezes _boot.py, which mounts the filesystem, and the
# asyncio and network helpers a stock image has.
include("$(PORT_DIR)/boards/manifest.py")

module("bp_app.py")
module("bp_cuff.py")
module("ecg_ads1292r.py")
module("ecg_app.py")
module("glucose_app.py")
module("glucose_meter.py")
module("hal.py")
module("kiosk_link.py")
module("link_client.py")
module("link_journal.py")
module("link_update.py")
module("spo2_max30102.py")
module("temp_mlx90614.py")
module("updater.py")
module("vitals_app.py")
module("weight_app.py")
module("weight_hx711.py")
