"""Names of the kiosk link's codes, for the gateway's logs, errors and validation.

They live here, not in firmware/kiosk_link.py, so a board does not carry five dicts and some
fifty strings in its heap that it never prints: a board logs codes as numbers, the gateway names
them. Every code in kiosk_link has a name here (tests/unit/test_link_codec.py checks it).
"""

from firmware import kiosk_link as link

MESSAGE_NAMES: dict[int, str] = {
    link.MSG_HELLO: "hello",
    link.MSG_READING: "reading",
    link.MSG_ACK: "ack",
    link.MSG_NAK: "nak",
    link.MSG_STATUS: "status",
    link.MSG_DEVICE_ERROR: "device_error",
    link.MSG_ECG_CHUNK: "ecg_chunk",
    link.MSG_TIME_SYNC: "time_sync",
    link.MSG_UPDATE_OFFER: "update_offer",
    link.MSG_UPDATE_FILE: "update_file",
    link.MSG_UPDATE_CHUNK: "update_chunk",
    link.MSG_UPDATE_COMMIT: "update_commit",
    link.MSG_UPDATE_REPLY: "update_reply",
}

KIND_NAMES: dict[int, str] = {
    link.KIND_BP: "bp",
    link.KIND_GLUCOSE: "glucose",
    link.KIND_ECG: "ecg",
    link.KIND_SPO2: "spo2",
    link.KIND_TEMPERATURE: "temperature",
    link.KIND_WEIGHT: "weight",
}

FIELD_NAMES: dict[int, str] = {
    link.FIELD_SYSTOLIC: "systolic",
    link.FIELD_DIASTOLIC: "diastolic",
    link.FIELD_MEAN_ARTERIAL: "mean_arterial",
    link.FIELD_PULSE_RATE: "pulse_rate",
    link.FIELD_GLUCOSE: "glucose",
    link.FIELD_SPO2: "spo2",
    link.FIELD_BODY_TEMPERATURE: "body_temperature",
    link.FIELD_BODY_WEIGHT: "body_weight",
}

FLAG_NAMES: dict[int, str] = {
    link.FLAG_IRREGULAR_PULSE: "irregular_pulse",
    link.FLAG_BODY_MOVEMENT: "body_movement",
    link.FLAG_CUFF_LOOSE: "cuff_loose",
    link.FLAG_CONTROL_SOLUTION: "control_solution",
    link.FLAG_LOW_PERFUSION: "low_perfusion",
    link.FLAG_LEAD_OFF: "lead_off",
    link.FLAG_UNSTABLE: "unstable",
    link.FLAG_ABOVE_RANGE: "above_range",
    link.FLAG_BELOW_RANGE: "below_range",
    link.FLAG_FASTING: "fasting",
    link.FLAG_AFTER_MEAL: "after_meal",
}

ERROR_NAMES: dict[int, str] = {
    link.ERROR_CUFF_LEAK: "cuff_leak",
    link.ERROR_MOTION: "motion",
    link.ERROR_OVER_PRESSURE: "over_pressure",
    link.ERROR_SENSOR_TIMEOUT: "sensor_timeout",
    link.ERROR_STRIP: "strip_error",
    link.ERROR_TEMPERATURE: "temperature_out_of_range",
    link.ERROR_SAMPLE_INSUFFICIENT: "sample_insufficient",
    link.ERROR_LEAD_OFF: "lead_off",
    link.ERROR_NO_FINGER: "no_finger",
    link.ERROR_SENSOR_NOT_FOUND: "sensor_not_found",
    link.ERROR_OVERLOAD: "overload",
    link.ERROR_SENSOR_FAULT: "sensor_fault",
}
