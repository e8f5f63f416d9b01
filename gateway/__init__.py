"""The kiosk gateway: ingest from peripherals, validate, store durably, sign and sync."""
