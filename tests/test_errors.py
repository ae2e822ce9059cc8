"""How messages show raw names and values from a layer."""

from __future__ import annotations

import pytest

from ocilayer.errors import show


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"etc/passwd", "'etc/passwd'"),
        ("naïve/日本".encode(), "'naïve/日本'"),
        (b"caf\xe9", r"'caf\xe9'"),
        (b"\x1b]0;title\x07", r"'\x1b]0;title\x07'"),
        (b"line\nbreak\ttab", r"'line\nbreak\ttab'"),
        (b"it's", r"'it\'s'"),
        (b"back\\slash", r"'back\\slash'"),
        (b"zero\x00width\xe2\x80\x8b", r"'zero\x00width\u200b'"),
        (b"", "''"),
    ],
    ids=[
        "ascii",
        "utf-8",
        "latin-1",
        "osc-escape",
        "controls",
        "quote",
        "backslash",
        "zero-width",
        "empty",
    ],
)
def test_show_escapes_terminal_controls(value: bytes, shown: str) -> None:
    assert show(value) == shown


def test_show_cuts_long_values() -> None:
    assert show(b"x" * 201) == "'" + "x" * 200 + "'... (201 bytes)"
    assert show(b"x" * 200) == "'" + "x" * 200 + "'"
    # A cut inside a UTF-8 sequence shows the bytes before it escaped.
    assert show("aé".encode(), limit=2) == r"'a\xc3'... (3 bytes)"
