"""The ``segmate`` command line and ``make demo``."""
