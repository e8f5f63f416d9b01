"""Pure decoders for Bluetooth SIG GATT health-service characteristics (bytes in, typed results out)."""
