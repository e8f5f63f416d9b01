"""Host side of the firmware: shims that let the board code run on the MicroPython unix port."""
