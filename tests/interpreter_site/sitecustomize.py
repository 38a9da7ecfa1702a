"""Imported at the start of every Python process the tests start (tests/conftest.py puts this
folder on their PYTHONPATH): the interpreter speed-ups of tests/interpreter_speedups.py, loaded
from its file (the tests' folder is not put on sys.path, so its names shadow nothing)."""
import importlib.util
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1" and "interpreter_speedups" not in sys.modules:
    _path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "interpreter_speedups.py")
    _spec = importlib.util.spec_from_file_location("interpreter_speedups", _path)
    _module = sys.modules["interpreter_speedups"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.install()
