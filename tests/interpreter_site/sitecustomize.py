"""Imported at the start of every Python process the tests start (tests/conftest.py puts this
folder on their PYTHONPATH): the interpreter speed-ups of tests/interpreter_speedups.py."""
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import interpreter_speedups

    interpreter_speedups.install()
