"""The optional C extensions, loaded when they were built and are not turned off.

`setup.py` builds them when a compiler is there at install time. Setting
OCILAYER_PURE_PYTHON to a non-empty value turns all of them off, so that every job
takes its Python path. The tests run both paths on the same inputs.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON = "OCILAYER_PURE_PYTHON"


def load_extension(name: str) -> ModuleType | None:
    """Return the extension module `ocilayer.<name>`, or None without it."""
    if os.environ.get(PURE_PYTHON):
        return None
    try:
        return importlib.import_module(f"ocilayer.{name}")
    except ImportError:
        return None
