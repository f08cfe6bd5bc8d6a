"""Built-in calibration and held-out text for the quantize stage (package data)."""
