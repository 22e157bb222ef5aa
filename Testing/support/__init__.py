"""Test support code that pytest fixtures (conftest.py) and the tests' child processes share.

Test modules do not import it: they ask conftest.py's fixtures for what it provides. Only child
processes that a test starts (which have no fixtures) import it, with ``Testing`` on PYTHONPATH.
"""
