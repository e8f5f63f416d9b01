"""ECG board application: ADS1292R frames -> ECG_CHUNK messages on the kiosk link.

Samples go out 40 per chunk (both leads: `ecg_chunk_capacity(2)`, 80 ms at 500 SPS) through the
link client's ring of unacked messages (LINK_RING chunks: 0.96 s of ECG in flight, 3 KB of
preallocated frames). While that ring is full, samples wait in the driver's ring (SAMPLE_RING
frames, 0.26 s more); if that overflows too, the driver drops frames and the gap shows in
first_sample. The link ring is the larger of the two on purpose: a sample waits there as 3 bytes
per lead, against 9 bytes per frame (status word included) plus its gap count in the driver's.
Together they ride out 1.2 s of a gateway that does not ack (an SD card's slow fsync); a longer
stall shows as a gap, never as silent loss. The sizes keep the app in its 32 KB heap budget.
first_sample counts sample periods since the part first started, so consecutive chunks satisfy
first_sample + count == next first_sample unless samples are missing: every gap is visible.

The chunk's lead_off byte carries the part's LOFF_STAT bits: 0x01 LA, 0x02 and 0x08 RA,
0x04 LL, 0x10 RL (right-leg drive). Faults become DEVICE_ERROR messages, once per episode:
- the part is not an ADS1292R or does not answer (ID register) -> sensor_not_found; retried;
- its registers do not read back as written -> sensor_fault; retried;
- no DRDY for 100 ms while running -> sensor_timeout; the part is re-initialised every second;
- frames without the status header for 50 ms -> sensor_fault; re-initialised;
- an electrode comes off -> lead_off. The chunk where it happened goes out with lead_off set,
  then streaming pauses (an open input reads the rail, not ECG) and resumes once every electrode
  is on again, first_sample showing the time that passed.
"""

import gc
import select
import time
from array import array

import kiosk_link as link
from ecg_ads1292r import CHANNELS, FAULT_NONE, FAULT_NOT_FOUND, Ads1292r
from hal import irq_source, pollable, service_irqs
from link_client import LinkClient

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


MODEL = "KX-ECG200"
FIRMWARE_VERSION = "0.1.0"

CHUNK = link.ecg_chunk_capacity(CHANNELS)
CHUNK_PAYLOAD = link.ECG_HEAD_SIZE + 3 * CHANNELS * CHUNK
LINK_RING = const(12)
SAMPLE_RING = const(128)
_FLUSH_MS = const(200)  # a partial chunk waits at most this long for more samples
_TIMEOUT_US = const(100000)
_RESTART_MS = const(1000)
_RETRY_INIT_MS = const(2000)
_BAD_RUN = const(25)
_STATS_MS = const(10000)
_LOOP_MS = const(20)  # longest sleep of the loop: timeouts, flushes and retransmits run this often
STATUS_INTERVAL_MS = const(60000)
MAINS_POWERED = const(255)


class EcgStreamer:
    """Drains the driver into chunks and sends them, and turns faults into device errors."""

    def __init__(self, client, afe, log=print):
        self.client = client
        self.afe = afe
        self.log = log
        self.samples = array("i", bytes(4 * CHUNK * CHANNELS))
        self.payload = bytearray(CHUNK_PAYLOAD)
        self.fill = 0
        self.first = 0
        self.lead_off = 0
        self.since_ms = 0
        self.running = False
        self.init_error = 0  # device error already reported for the current start-up failure
        self.next_init_ms = time.ticks_ms()
        self.stalled = False
        self.stall_mark = 0
        self.next_restart_ms = 0
        self.faulted = False
        self.paused = False  # leads off: the lead-off chunk has gone out, the rest is not sent
        self.lead_off_reported = False
        self.errors = []  # device error codes waiting for room in the link ring
        self.chunks = 0
        self.sent_samples = 0
        self.suppressed = 0  # lead-off samples not streamed while paused

    def step(self):
        now = time.ticks_ms()
        if not self.running:
            if time.ticks_diff(now, self.next_init_ms) >= 0:
                self._start(now)
        else:
            self._watch(now)
        self._send_errors()
        self._drain(now)

    def _report(self, code):
        self.errors.append(code)
        self._send_errors()

    def _send_errors(self):
        while self.errors and self.client.has_room():
            code = self.errors.pop(0)
            self.client.send(link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_ECG, code))

    def _start(self, now):
        fault = self.afe.start()
        if fault == FAULT_NONE:
            self.running = True
            self.init_error = 0
            self.log("ecg: ADS1292R running at 500 SPS")
            return True
        self.running = False
        self.next_init_ms = time.ticks_add(now, _RETRY_INIT_MS)
        code = link.ERROR_SENSOR_NOT_FOUND if fault == FAULT_NOT_FOUND else link.ERROR_SENSOR_FAULT
        if code != self.init_error:
            self.init_error = code
            self._report(code)
            self.log("ecg: front end not ready (fault %d, id 0x%02x)" % (fault, self.afe.device_id))
        return False

    def _watch(self, now):
        afe = self.afe
        if afe.silent_us() > _TIMEOUT_US:
            afe.settle()  # no frame will come to answer a timing question: release what waits
            if not self.stalled:
                self.stalled = True
                self.stall_mark = afe.received
                self.next_restart_ms = time.ticks_add(now, _RESTART_MS)
                self._report(link.ERROR_SENSOR_TIMEOUT)
                self.log("ecg: no DRDY for 100 ms")
            elif time.ticks_diff(now, self.next_restart_ms) >= 0:
                self.next_restart_ms = time.ticks_add(now, _RESTART_MS)
                self._start(now)
        elif self.stalled and afe.received != self.stall_mark:
            self.stalled = False
            self.log("ecg: DRDY back")
        if afe.bad_run >= _BAD_RUN:
            if not self.faulted:
                self.faulted = True
                self._report(link.ERROR_SENSOR_FAULT)
                self.log("ecg: frames without status header")
            if time.ticks_diff(now, self.next_restart_ms) >= 0:
                self.next_restart_ms = time.ticks_add(now, _RESTART_MS)
                self._start(now)
        elif self.faulted and not afe.bad_run:
            self.faulted = False

    def _drain(self, now):
        afe = self.afe
        while True:
            if self.fill < CHUNK:
                count = afe.take(self.samples, self.fill, CHUNK - self.fill)
                if count and not self.fill:
                    self.first = afe.first
                    self.lead_off = afe.lead_off
                    self.since_ms = now
                self.fill += count
            if not self.fill:
                return
            if self.fill < CHUNK and not afe.available() and time.ticks_diff(now, self.since_ms) < _FLUSH_MS:
                return  # the run goes on: wait for the rest of the chunk
            if not self._ship():
                return  # link ring full: samples wait here and in the driver's ring

    def _ship(self):
        """Send the chunk being filled; False when the link ring has no room for it yet."""
        if self.lead_off:
            if self.paused:
                self.suppressed += self.fill
                self.fill = 0
                return True
            if not self.lead_off_reported:
                self.lead_off_reported = True
                self._report(link.ERROR_LEAD_OFF)
                self.log("ecg: lead off (LOFF_STAT 0x%02x)" % self.lead_off)
        if self.errors or not self.client.has_room():
            return False
        length = link.pack_ecg_chunk_into(
            self.payload, self.first, CHANNELS, self.fill, self.lead_off, self.samples
        )
        # Not durable: a chunk lost with a reboot shows as a gap in first_sample.
        self.client.send(link.MSG_ECG_CHUNK, memoryview(self.payload)[:length], False)
        self.chunks += 1
        self.sent_samples += self.fill
        if self.lead_off:
            self.paused = True
        elif self.lead_off_reported:
            self.paused = False
            self.lead_off_reported = False
            self.log("ecg: leads on, streaming again")
        self.fill = 0
        return True

    def stats(self):
        afe = self.afe
        return "ecg stats: chunks %d samples %d overruns %d gaps %d spurious %d bad %d paused %d" % (
            self.chunks,
            self.sent_samples,
            afe.overruns,
            afe.gaps,
            afe.spurious,
            afe.bad_frames,
            self.suppressed,
        )


def run(link_uart, spi, cs, drdy, device_id, max_ms=None, log=print):
    """Main loop; returns the streamer after max_ms (tests) or never (board).

    The link client is polled when the gateway sent something and otherwise every _LOOP_MS
    (its retransmit timers need no finer grain), not on every DRDY. An idle poll allocates
    nothing, but each frame received and each burst of resends does, and less garbage means
    shorter collections holding off the DRDY handler.
    """
    # The sample ring is the largest block the app takes: it goes first, into a collected heap.
    gc.collect()
    afe = Ads1292r(spi, cs, drdy, ring_size=SAMPLE_RING)
    client = LinkClient(link_uart, LINK_RING, frame_capacity=link.frame_size(CHUNK_PAYLOAD))
    capabilities = link.capability_of_kind(link.KIND_ECG) | link.CAP_STATUS
    client.hello(link.encode_hello(client.session_id, device_id, MODEL, FIRMWARE_VERSION, capabilities))
    streamer = EcgStreamer(client, afe, log)
    poller = select.poll()
    link_stream = pollable(link_uart)
    poller.register(link_stream, select.POLLIN)
    source = irq_source()  # the unix port's pin edges; None on a board
    if source is not None:
        poller.register(source, select.POLLIN)
    started = time.ticks_ms()
    stats_due = time.ticks_add(started, _STATS_MS)
    status_due = started
    poll_due = started
    while max_ms is None or time.ticks_diff(time.ticks_ms(), started) < max_ms:
        link_ready = False
        for stream, _ in poller.ipoll(_LOOP_MS):
            if stream is link_stream:
                link_ready = True
        service_irqs()
        streamer.step()
        service_irqs()
        now = time.ticks_ms()
        if time.ticks_diff(now, status_due) >= 0 and client.has_room():
            # STATUS error_flags: sample periods missing so far (low 16 bits).
            status_due = time.ticks_add(now, STATUS_INTERVAL_MS)
            uptime_s = time.ticks_diff(now, started) // 1000
            payload = link.encode_status(MAINS_POWERED, streamer.afe.gaps & 0xFFFF, uptime_s)
            client.send(link.MSG_STATUS, payload, False)
        if link_ready or time.ticks_diff(now, poll_due) >= 0:
            client.poll()
            poll_due = time.ticks_add(now, _LOOP_MS)
        if time.ticks_diff(now, stats_due) >= 0:
            stats_due = time.ticks_add(stats_due, _STATS_MS)
            log(streamer.stats() + " retransmits %d" % client.retransmits)
    log(streamer.stats() + " retransmits %d" % client.retransmits)
    return streamer
