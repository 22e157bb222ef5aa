"""Writing results: one module per output format, and the atomic write every format uses."""
