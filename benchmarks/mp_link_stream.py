"""Stream ECG chunks as fast as the link allows (MicroPython unix port), for bench_firmware.py.

    micropython benchmarks/mp_link_stream.py FIRMWARE_DIR LINK_TTY SECONDS [RING_SIZE]

Sends full-size ECG_CHUNK messages (2 channels x 40 samples) through LinkClient (the ring and
slot size firmware/ecg_app.py uses, unless RING_SIZE is given), keeping the ring full, and
prints `key value` lines: chunks sent, acked, acked within the time (the throughput: what was
sent but is still in flight when the time is up does not count), retransmits, elapsed ms.
"""

import sys

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/host")

import select
import time

import kiosk_link as link
from ecg_app import CHUNK_PAYLOAD, LINK_RING
from hal import UART, pollable
from link_client import LinkClient

CHANNELS = 2


def main():
    uart = UART(sys.argv[2], 921600)
    seconds = int(sys.argv[3])
    ring_size = int(sys.argv[4]) if len(sys.argv) > 4 else LINK_RING
    client = LinkClient(uart, ring_size, frame_capacity=link.frame_size(CHUNK_PAYLOAD))
    client.hello(link.encode_hello(client.session_id, "ecg-bench", "KX-ECG-BENCH", "0.0.0"))
    per_chunk = link.ecg_chunk_capacity(CHANNELS)
    buf = bytearray(link.MAX_PAYLOAD)
    samples = [0] * (per_chunk * CHANNELS)
    poller = select.poll()
    poller.register(pollable(uart), select.POLLIN)
    while client.pending():  # wait for the hello ack
        poller.poll(5)
        client.poll()
    first_sample = 0
    sent = 0
    started = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), started) < seconds * 1000:
        while client.has_room():
            for i in range(per_chunk):
                samples[2 * i] = (first_sample + i) & 0x7FFFFF
                samples[2 * i + 1] = -((first_sample + i) & 0x7FFFFF)
            length = link.pack_ecg_chunk_into(buf, first_sample, CHANNELS, per_chunk, 0, samples)
            client.send(link.MSG_ECG_CHUNK, memoryview(buf)[:length], False)
            first_sample += per_chunk
            sent += 1
        poller.poll(2)
        client.poll()
    elapsed = time.ticks_diff(time.ticks_ms(), started)
    delivered = client.acked - 1  # stored by the gateway within the time; the rest is in flight
    drain = time.ticks_ms()
    while client.pending() and time.ticks_diff(time.ticks_ms(), drain) < 5000:
        poller.poll(5)
        client.poll()
    print("sent", sent)
    print("acked", client.acked - 1)
    print("acked_in_time", delivered)
    print("retransmits", client.retransmits)
    print("samples_per_chunk", per_chunk)
    print("elapsed_ms", elapsed)


main()
