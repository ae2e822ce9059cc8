"""go-winio's backuptar rules, both ways: backup stream to tar entries, tar entries back."""

from __future__ import annotations

import base64
import io

import pytest

from ocilayer.errors import TarFormatError
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows.backupstream import (
    BackupHeader,
    BackupStreamError,
    BackupStreamReader,
    BackupStreamWriter,
    StreamAttribute,
    StreamId,
)
from ocilayer.windows.backuptar import (
    GO_ZERO_TIME_NS,
    file_info_from_header,
    security_descriptor_from_header,
    write_backup_stream_from_tar_file,
    write_tar_file_from_backup_stream,
)
from ocilayer.windows.ea import ExtendedAttribute, encode_extended_attributes
from ocilayer.windows.fileinfo import FileBasicInfo, ns_to_filetime
from ocilayer.windows.reparse import ReparsePoint, encode_reparse_point
from ocilayer.windows.tarstream import TarInput, TarWriter
from windows_helpers import assert_go_reads_identically, backup_stream, parse_tar

SD = bytes.fromhex("010004801400000024000000000000000000000001010000000000050b000000")
INFO = FileBasicInfo(
    creation_time=132444736001234567,
    last_access_time=132444736011234567,
    last_write_time=132444736021234567,
    change_time=132444736031234567,
    attributes=0x20,
)
SPARSE = StreamAttribute.SPARSE
ONE_MB = 1_000_000


def data(size: int, attributes: int = 0) -> BackupHeader:
    return BackupHeader(StreamId.DATA, size, attributes=attributes)


def block(offset: int, size: int) -> BackupHeader:
    return BackupHeader(StreamId.SPARSE_BLOCK, size, attributes=SPARSE, offset=offset)


def security() -> tuple[BackupHeader, bytes]:
    return BackupHeader(StreamId.SECURITY, len(SD)), SD


def export_one(
    stream: bytes, size: int, info: FileBasicInfo = INFO, *, seekable: bool, name: str = "foo.txt"
) -> bytes:
    out = io.BytesIO()
    tar = TarWriter(out)
    write_tar_file_from_backup_stream(tar, io.BytesIO(stream), name, size, info, seekable=seekable)
    tar.close()
    return out.getvalue()


def read_back(tar_bytes: bytes) -> list[tuple[TarHeader, bytes]]:
    tar = TarInput(io.BytesIO(tar_bytes))
    entries = []
    while (header := tar.next()) is not None:
        content = b""
        while chunk := tar.read(1 << 20):
            content += chunk
        entries.append((header, content))
    return entries


# The backup streams BackupRead gives for go-winio's round-trip files, with security.
ROUND_TRIP_CASES = {
    "normalFile": (
        backup_stream(security(), (data(14), b"testing 1 2 3\n")),
        14,
        b"testing 1 2 3\n",
    ),
    "normalFileEmpty": (backup_stream(security(), (data(0), b"")), 0, b""),
    # Since a 2021 OS change an empty sparse file has a sparse data stream of size 0.
    "sparseFileEmpty": (backup_stream(security(), (data(0, SPARSE), b"")), 0, b""),
    "sparseFileWithNoAllocatedRanges": (
        backup_stream(security(), (data(0, SPARSE), b""), (block(ONE_MB, 0), b"")),
        ONE_MB,
        bytes(ONE_MB),
    ),
    # One allocated range comes as an ordinary data stream flagged sparse.
    "sparseFileWithOneAllocatedRange": (
        backup_stream(security(), (data(16, SPARSE), b"test sparse data")),
        16,
        b"test sparse data",
    ),
    "sparseFileWithMultipleAllocatedRanges": (
        backup_stream(
            security(),
            (data(0, SPARSE), b""),
            (block(0, 14), b"testing 1 2 3\n"),
            (block(ONE_MB, 16), b"more data later\n"),
            (block(ONE_MB + 16, 0), b""),
        ),
        ONE_MB + 16,
        b"testing 1 2 3\n" + bytes(ONE_MB - 14) + b"more data later\n",
    ),
}


@pytest.mark.parametrize("seekable", [False, True], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_round_trip_cases(case: str, seekable: bool) -> None:
    stream, size, content = ROUND_TRIP_CASES[case]
    tar_bytes = export_one(stream, size, seekable=seekable)
    [(header, read)] = read_back(tar_bytes)
    name, read_size, info = file_info_from_header(header)
    assert name == "foo.txt"
    assert read_size == size
    assert info == INFO
    assert header.pax_records[b"MSWINDOWS.fileattr"] == b"32"
    assert base64.b64decode(header.pax_records[b"MSWINDOWS.rawsd"]) == SD
    assert read == content


def test_zero_length_sparse_terminator() -> None:
    stream = backup_stream((data(0, SPARSE), b""), (block(0, 0), b""))
    tar_bytes = export_one(stream, 0, seekable=True, name="Files/Windows/Temp/DOBDAB.tmp")
    [(header, read)] = read_back(tar_bytes)
    assert header.name == b"Files/Windows/Temp/DOBDAB.tmp"
    assert header.size == 0
    assert read == b""


def test_directory_header() -> None:
    info = FileBasicInfo(INFO.creation_time, INFO.last_access_time, INFO.last_write_time, 0, 0x10)
    [entry] = parse_tar(export_one(backup_stream(security()), 4096, info, seekable=False))
    assert entry.typeflag == b"5"
    assert entry.mode == b"0040000\x00"
    assert entry.size == b"00000000000\x00"
    assert entry.records[b"MSWINDOWS.fileattr"] == b"16"


def test_file_without_data_stream_has_mode_zero() -> None:
    [entry] = parse_tar(export_one(backup_stream(security()), 0, seekable=False))
    assert entry.typeflag == b"0"
    assert entry.mode == b"0000000\x00"


@pytest.mark.parametrize(
    ("attributes", "mount_point", "mode"),
    [(0x420, False, b"0120000\x00"), (0x410, False, b"0160000\x00"), (0x410, True, b"0160000\x00")],
)
def test_reparse_point_headers(attributes: int, mount_point: bool, mode: bytes) -> None:
    reparse = encode_reparse_point(ReparsePoint("C:\\target\\dir", mount_point))
    info = FileBasicInfo(1, 2, 3, 4, attributes)
    stream = backup_stream(security(), (BackupHeader(StreamId.REPARSE_DATA, len(reparse)), reparse))
    tar_bytes = export_one(stream, 0, info, seekable=True)
    [entry] = parse_tar(tar_bytes)
    assert entry.typeflag == b"2"
    assert entry.mode == mode
    assert entry.linkname == b"C:\\target\\dir"
    assert (b"MSWINDOWS.mountpoint" in entry.records) is mount_point
    if mount_point:
        assert entry.records[b"MSWINDOWS.mountpoint"] == b"1"
    assert_go_reads_identically(tar_bytes)


def test_extended_attributes_after_data() -> None:
    eas = encode_extended_attributes([ExtendedAttribute(b"KEY", b"\x00value")])
    stream = backup_stream((data(2), b"hi"), (BackupHeader(StreamId.EA_DATA, len(eas)), eas))
    # Two-pass reading finds the EAs after the data; one-pass reading stops at the data.
    [two_pass] = parse_tar(export_one(stream, 2, seekable=True))
    [one_pass] = parse_tar(export_one(stream, 2, seekable=False))
    assert two_pass.records[b"MSWINDOWS.xattr.KEY"] == base64.b64encode(b"\x00value")
    assert b"MSWINDOWS.xattr.KEY" not in one_pass.records
    assert two_pass.data == one_pass.data == b"hi"


def test_alternate_streams_after_data_become_entries() -> None:
    before = (BackupHeader(StreamId.ALTERNATE_DATA, 3, ":early:$DATA"), b"old")
    after = (BackupHeader(StreamId.ALTERNATE_DATA, 4, ":late:$DATA"), b"late")
    stream = backup_stream(before, (data(1), b"d"), after)
    for seekable in (False, True):
        tar_bytes = export_one(stream, 1, seekable=seekable)
        entries = parse_tar(tar_bytes)
        assert [entry.name for entry in entries] == [b"foo.txt", b"foo.txt:late"]
        ads = entries[1]
        assert ads.data == b"late"
        assert ads.mode == entries[0].mode == b"0100000\x00"
        assert ads.mtime == entries[0].mtime
        assert [key for key, _ in ads.pax] == [b"atime", b"ctime", b"mtime"]
        assert_go_reads_identically(tar_bytes)


def test_alternate_streams_of_directory_dropped() -> None:
    info = FileBasicInfo(1, 2, 3, 4, 0x10)
    stream = backup_stream((BackupHeader(StreamId.ALTERNATE_DATA, 1, ":s:$DATA"), b"s"))
    entries = parse_tar(export_one(stream, 0, info, seekable=False))
    assert [entry.name for entry in entries] == [b"foo.txt"]


def test_sparse_alternate_stream_rejected() -> None:
    ads = BackupHeader(StreamId.ALTERNATE_DATA, 1, ":s:$DATA", attributes=SPARSE)
    stream = backup_stream((data(1), b"d"), (ads, b"s"))
    with pytest.raises(BackupStreamError, match="sparse alternate data stream ':s:\\$DATA'"):
        export_one(stream, 1, seekable=False)


def test_unknown_stream_ids_rejected() -> None:
    ghosted = (BackupHeader(StreamId.GHOSTED_FILE_EXTENTS, 1), b"g")
    with pytest.raises(BackupStreamError, match=r"^foo\.txt: unknown stream ID 11$"):
        export_one(backup_stream(ghosted, (data(0), b"")), 0, seekable=True)
    with pytest.raises(BackupStreamError, match="unknown stream ID 11 after the data"):
        export_one(backup_stream((data(0), b""), ghosted), 0, seekable=False)


def test_ignored_streams_pass() -> None:
    ignored = [
        (BackupHeader(stream_id, 1), b"i")
        for stream_id in (StreamId.LINK, StreamId.PROPERTY_DATA, StreamId.OBJECT_ID, 10)
    ]
    stream = backup_stream(*ignored, (data(1), b"d"), *ignored)
    [entry] = parse_tar(export_one(stream, 1, seekable=True))
    assert entry.data == b"d"


def test_size_mismatch_rejected() -> None:
    with pytest.raises(
        BackupStreamError, match="file size 3 does not match the data stream size 2"
    ):
        export_one(backup_stream((data(2), b"ab")), 3, seekable=False)


def test_sparse_block_going_back_rejected() -> None:
    stream = backup_stream((data(0, SPARSE), b""), (block(10, 1), b"x"), (block(5, 0), b""))
    with pytest.raises(BackupStreamError, match="offset 5 goes back before 11"):
        export_one(stream, 20, seekable=False)


def test_sparse_blocks_past_size_rejected() -> None:
    stream = backup_stream((data(0, SPARSE), b""), (block(8, 0), b""))
    with pytest.raises(TarFormatError, match="write too long"):
        export_one(stream, 4, seekable=False)


def test_sparse_blocks_short_of_size_rejected() -> None:
    stream = backup_stream((data(0, SPARSE), b""), (block(2, 0), b""))
    with pytest.raises(TarFormatError, match="missed writing 2 bytes"):
        export_one(stream, 4, seekable=False)


def header_for(name: bytes, typeflag: bytes = b"0", **records: bytes) -> TarHeader:
    return TarHeader(
        name=name,
        typeflag=typeflag,
        mtime_ns=1_600_000_000_000_000_000,
        pax_records={key.replace("_", ".").encode(): value for key, value in records.items()},
    )


def test_file_info_defaults() -> None:
    _, size, info = file_info_from_header(header_for(b"Files/d", b"5"))
    assert size == 0
    assert info.attributes == 0x10
    assert info.creation_time == info.last_write_time == ns_to_filetime(1_600_000_000 * 10**9)
    assert info.last_access_time == info.change_time == ns_to_filetime(GO_ZERO_TIME_NS)
    _, _, info = file_info_from_header(header_for(b"Files/f"))
    assert info.attributes == 0


def test_file_info_rejects_bad_attributes() -> None:
    for bad in (b"-1", b"0x20", b"4294967296", b""):
        header = header_for(b"f")
        header.pax_records[b"MSWINDOWS.fileattr"] = bad
        with pytest.raises(TarFormatError, match=r"invalid MSWINDOWS\.fileattr"):
            file_info_from_header(header)


def test_file_info_long_attributes() -> None:
    """More digits than Python's int() converts (4,300) raise TarFormatError."""
    header = header_for(b"f")
    header.pax_records[b"MSWINDOWS.fileattr"] = b"9" * 5000
    with pytest.raises(TarFormatError) as raised:
        file_info_from_header(header)
    assert str(raised.value) == (
        "'f': invalid MSWINDOWS.fileattr '999999999999999999999999'... (5000 bytes); "
        "expected a decimal 32-bit number"
    )
    header.pax_records[b"MSWINDOWS.fileattr"] = b"0" * 5000 + b"32"
    _, _, info = file_info_from_header(header)
    assert info.attributes == 32


def test_sddl_needs_a_converter() -> None:
    header = header_for(b"f")
    header.pax_records[b"MSWINDOWS.sd"] = b"O:BAG:BA"
    with pytest.raises(TarFormatError, match="can only be converted on a Windows host"):
        security_descriptor_from_header(header)
    assert security_descriptor_from_header(header, lambda sddl: sddl.encode()) == b"O:BAG:BA"
    header.pax_records[b"MSWINDOWS.rawsd"] = base64.b64encode(SD)
    assert security_descriptor_from_header(header) == SD


def build_tar(*entries: tuple[TarHeader, bytes]) -> TarInput:
    out = io.BytesIO()
    tar = TarWriter(out)
    for header, content in entries:
        header.size = len(content) if header.typeflag == b"0" else 0
        tar.write_header(header)
        tar.write(content)
    tar.close()
    return TarInput(io.BytesIO(out.getvalue()))


def test_backup_stream_from_tar_order() -> None:
    main = header_for(b"Files/f")
    main.pax_records[b"MSWINDOWS.rawsd"] = base64.b64encode(SD)
    main.pax_records[b"MSWINDOWS.xattr.B"] = base64.b64encode(b"2")
    main.pax_records[b"MSWINDOWS.xattr.A"] = base64.b64encode(b"1")
    tar = build_tar(
        (main, b"body"),
        (header_for(b"Files/f:one"), b"1"),
        (header_for(b"Files/f:two"), b"22"),
        (header_for(b"Files/g"), b""),
    )
    first = tar.next()
    assert first is not None
    out = io.BytesIO()
    following = write_backup_stream_from_tar_file(BackupStreamWriter(out), tar, first)
    assert following is not None
    assert following.name == b"Files/g"
    eas = encode_extended_attributes([ExtendedAttribute(b"A", b"1"), ExtendedAttribute(b"B", b"2")])
    assert out.getvalue() == backup_stream(
        security(),
        (BackupHeader(StreamId.EA_DATA, len(eas)), eas),
        (data(4), b"body"),
        (BackupHeader(StreamId.ALTERNATE_DATA, 1, ":one:$DATA"), b"1"),
        (BackupHeader(StreamId.ALTERNATE_DATA, 2, ":two:$DATA"), b"22"),
    )


def test_backup_stream_from_symlink_header() -> None:
    link = header_for(b"Files/l", b"2", MSWINDOWS_mountpoint=b"1")
    link.linkname = b"C:/Windows"
    tar = build_tar((link, b""))
    first = tar.next()
    assert first is not None
    out = io.BytesIO()
    assert write_backup_stream_from_tar_file(BackupStreamWriter(out), tar, first) is None
    reparse = encode_reparse_point(ReparsePoint("C:\\Windows", True))
    assert out.getvalue() == backup_stream(
        (BackupHeader(StreamId.REPARSE_DATA, len(reparse)), reparse)
    )
    reader = BackupStreamReader(io.BytesIO(out.getvalue()))
    assert reader.next() == BackupHeader(StreamId.REPARSE_DATA, len(reparse))


def test_empty_regular_file_still_gets_data_stream() -> None:
    tar = build_tar((header_for(b"Files/e"), b""))
    first = tar.next()
    assert first is not None
    out = io.BytesIO()
    write_backup_stream_from_tar_file(BackupStreamWriter(out), tar, first)
    assert out.getvalue() == backup_stream((data(0), b""))
