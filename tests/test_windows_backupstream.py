"""The Win32 backup stream codec: exact bytes, stream by stream reading, and errors."""

from __future__ import annotations

import io

import pytest

from ocilayer.windows.backupstream import (
    BackupHeader,
    BackupStreamError,
    BackupStreamReader,
    BackupStreamWriter,
    StreamAttribute,
    StreamId,
    decode_stream_name,
    encode_stream,
)


class Unseekable(io.RawIOBase):
    """A reader that cannot seek, like a pipe or BackupRead."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(buffer), 7))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def read_all(data: bytes, seekable: bool = True) -> list[tuple[BackupHeader, bytes]]:
    raw = io.BytesIO(data) if seekable else io.BufferedReader(Unseekable(data))
    reader = BackupStreamReader(raw)
    streams = []
    while (header := reader.next()) is not None:
        streams.append((header, reader.read_all()))
    return streams


def test_data_stream_bytes() -> None:
    encoded = encode_stream(BackupHeader(StreamId.DATA, 14), b"testing 1 2 3\n")
    assert encoded == (
        bytes.fromhex("01000000000000000e0000000000000000000000") + b"testing 1 2 3\n"
    )


def test_named_stream_bytes() -> None:
    encoded = encode_stream(BackupHeader(StreamId.ALTERNATE_DATA, 1, ":a:$DATA"), b"x")
    name = ":a:$DATA".encode("utf-16-le")
    assert encoded == (
        bytes.fromhex("04000000000000000100000000000000") + b"\x10\x00\x00\x00" + name + b"x"
    )


def test_sparse_block_size_counts_offset() -> None:
    header = BackupHeader(StreamId.SPARSE_BLOCK, 3, attributes=StreamAttribute.SPARSE, offset=4096)
    encoded = encode_stream(header, b"abc")
    assert encoded[8:16] == (3 + 8).to_bytes(8, "little")
    assert encoded[20:28] == (4096).to_bytes(8, "little")
    assert encoded[28:] == b"abc"
    assert read_all(encoded) == [(header, b"abc")]


def test_data_and_alternate_stream_read() -> None:
    # The streams BackupRead gives for a file with one named stream.
    data = encode_stream(BackupHeader(StreamId.DATA, 14), b"testing 1 2 3\n") + encode_stream(
        BackupHeader(StreamId.ALTERNATE_DATA, 22, ":ads.txt:$DATA"), b"alternate data stream\n"
    )
    for seekable in (True, False):
        streams = read_all(data, seekable)
        assert streams == [
            (BackupHeader(StreamId.DATA, 14), b"testing 1 2 3\n"),
            (
                BackupHeader(StreamId.ALTERNATE_DATA, 22, ":ads.txt:$DATA"),
                b"alternate data stream\n",
            ),
        ]


def test_writer_output_reads_back() -> None:
    out = io.BytesIO()
    writer = BackupStreamWriter(out)
    writer.write_header(BackupHeader(StreamId.DATA, 14))
    writer.write(b"testing ")
    writer.write(b"1 2 3\n")
    writer.write_header(BackupHeader(StreamId.ALTERNATE_DATA, 17, ":ads.txt:$DATA"))
    writer.write(b"alternate stream\n")
    writer.close()
    assert read_all(out.getvalue()) == [
        (BackupHeader(StreamId.DATA, 14), b"testing 1 2 3\n"),
        (BackupHeader(StreamId.ALTERNATE_DATA, 17, ":ads.txt:$DATA"), b"alternate stream\n"),
    ]


@pytest.mark.parametrize("seekable", [True, False])
def test_next_skips_unread_data(seekable: bool) -> None:
    data = encode_stream(BackupHeader(StreamId.DATA, 5), b"hello") + encode_stream(
        BackupHeader(StreamId.EA_DATA, 2), b"ea"
    )
    raw = io.BytesIO(data) if seekable else io.BufferedReader(Unseekable(data))
    reader = BackupStreamReader(raw)
    assert reader.next() == BackupHeader(StreamId.DATA, 5)
    assert reader.read(2) == b"he"
    assert reader.next() == BackupHeader(StreamId.EA_DATA, 2)
    assert reader.read_all() == b"ea"
    assert reader.next() is None
    assert reader.next() is None


def test_rewind_reads_again() -> None:
    data = encode_stream(BackupHeader(StreamId.SECURITY, 2), b"sd") + encode_stream(
        BackupHeader(StreamId.DATA, 1), b"d"
    )
    raw = io.BytesIO(b"\x20\x00\x00\x00" + data)
    raw.seek(4)
    reader = BackupStreamReader(raw, origin=4)
    assert [reader.next(), reader.next(), reader.next()][2] is None
    reader.rewind(0)
    assert reader.next() == BackupHeader(StreamId.SECURITY, 2)
    assert reader.read_all() == b"sd"


def test_name_cut_at_nul_and_lone_surrogate() -> None:
    assert decode_stream_name(":a\x00b".encode("utf-16-le")) == ":a"
    assert decode_stream_name(b"\x00\xd8:\x00") == "\ufffd:"
    assert decode_stream_name("\U0001f600".encode("utf-16-le")) == "\U0001f600"


def test_unknown_stream_id_passes_through() -> None:
    data = encode_stream(BackupHeader(42, 1), b"?")
    assert read_all(data) == [(BackupHeader(42, 1), b"?")]


def test_truncated_header_names_offset() -> None:
    data = encode_stream(BackupHeader(StreamId.DATA, 1), b"x") + b"\x01\x00"
    raw = io.BytesIO(b"\x00" * 4 + data)
    raw.seek(4)
    reader = BackupStreamReader(raw, origin=4, source="Files\\x.txt")
    assert reader.next() is not None
    with pytest.raises(BackupStreamError) as caught:
        reader.next()
    assert str(caught.value) == (
        "Files\\x.txt: invalid backup stream at offset 25: input ends inside a stream header"
    )


def test_truncated_data_names_offset() -> None:
    data = encode_stream(BackupHeader(StreamId.DATA, 10), b"x" * 10)[:-4]
    reader = BackupStreamReader(io.BufferedReader(Unseekable(data)))
    assert reader.next() == BackupHeader(StreamId.DATA, 10)
    with pytest.raises(BackupStreamError, match="at offset 26: 4 bytes of stream data missing"):
        reader.read_all()


def test_truncated_data_found_when_skipping() -> None:
    data = encode_stream(BackupHeader(StreamId.DATA, 10), b"x" * 10)[:-4]
    reader = BackupStreamReader(io.BytesIO(data))
    reader.next()
    with pytest.raises(BackupStreamError, match="input ends inside a stream"):
        reader.next()


def test_odd_name_size_rejected() -> None:
    data = b"\x04\x00\x00\x00" + bytes(4) + bytes(8) + b"\x03\x00\x00\x00" + b"abc"
    with pytest.raises(BackupStreamError, match="at offset 0: stream name size 3 is odd"):
        read_all(data)


def test_sparse_block_too_small_rejected() -> None:
    data = b"\x09\x00\x00\x00" + bytes(4) + (4).to_bytes(8, "little") + bytes(4) + bytes(4)
    with pytest.raises(BackupStreamError, match="sparse block size 4 cannot hold its offset"):
        read_all(data)


def test_writer_rejects_overflow_and_short_stream() -> None:
    writer = BackupStreamWriter(io.BytesIO(), source="Files\\a")
    writer.write_header(BackupHeader(StreamId.DATA, 2))
    with pytest.raises(BackupStreamError, match="3 bytes written where the stream has 2 left"):
        writer.write(b"abc")
    writer.write(b"a")
    with pytest.raises(BackupStreamError, match="the previous stream is missing 1 bytes"):
        writer.write_header(BackupHeader(StreamId.EA_DATA, 0))
    with pytest.raises(BackupStreamError, match="missing 1 bytes"):
        writer.close()
