"""go-winio's backuptar rules: tar headers from Win32 backup streams, and back.

Export turns (name, size, FILE_BASIC_INFO, backup stream) into one PAX entry plus one
entry per alternate data stream. Import turns a tar header (and the ADS entries after
it) back into a FILE_BASIC_INFO and a backup stream. The rules follow go-winio
v0.6.3-0.20251027160822-ad3df93bed29, the version hcsshim pins, plus one fix that
go-winio merged in September 2026. With it, sparse-block streams are accepted before
the data stream when the input is read twice, and a sparse terminator after the data
is tolerated. So a sparse file never fails with "unknown stream ID 9".
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import BinaryIO

from ocilayer.errors import TarFormatError, show
from ocilayer.tarformat.encoder import TarHeader, format_pax_time
from ocilayer.windows.backupstream import (
    BackupHeader,
    BackupStreamError,
    BackupStreamReader,
    BackupStreamWriter,
    StreamAttribute,
    StreamId,
)
from ocilayer.windows.ea import (
    ExtendedAttribute,
    decode_extended_attributes,
    encode_extended_attributes,
)
from ocilayer.windows.fileinfo import (
    FILE_ATTRIBUTE_DIRECTORY,
    FileBasicInfo,
    filetime_to_ns,
    ns_to_filetime,
    parse_pax_time,
)
from ocilayer.windows.reparse import ReparsePoint, decode_reparse_point, encode_reparse_point
from ocilayer.windows.tarstream import TarInput, TarWriter

MODE_DIR = 0o40000
MODE_REG = 0o100000
MODE_LNK = 0o120000

PAX_FILEATTR = b"MSWINDOWS.fileattr"
PAX_RAWSD = b"MSWINDOWS.rawsd"
PAX_SDDL = b"MSWINDOWS.sd"
PAX_MOUNTPOINT = b"MSWINDOWS.mountpoint"
PAX_XATTR_PREFIX = b"MSWINDOWS.xattr."
PAX_CREATIONTIME = b"LIBARCHIVE.creationtime"

# Go's zero time.Time (0001-01-01) as Unix nanoseconds: what a missing tar time becomes.
GO_ZERO_TIME_NS = -62_135_596_800 * 1_000_000_000

# Streams that the metadata pass reads past. Sparse blocks are among them since the
# September 2026 go-winio fix; before it they failed the export.
_SKIPPED_BEFORE_DATA = frozenset(
    [
        StreamId.ALTERNATE_DATA,
        StreamId.LINK,
        StreamId.PROPERTY_DATA,
        StreamId.OBJECT_ID,
        StreamId.TXFS_DATA,
        StreamId.SPARSE_BLOCK,
    ]
)
# Streams after the data that carry nothing a tar entry can still take.
_SKIPPED_AFTER_DATA = frozenset(
    [
        StreamId.EA_DATA,
        StreamId.LINK,
        StreamId.PROPERTY_DATA,
        StreamId.OBJECT_ID,
        StreamId.TXFS_DATA,
        StreamId.SPARSE_BLOCK,
    ]
)
_ADS_SUFFIX = ":$DATA"
_COPY_CHUNK = 1 << 20
_DECIMAL = re.compile(rb"[0-9]+")

SddlConverter = Callable[[str], bytes]


def tar_name(name: str) -> bytes:
    """Return the tar name of a Windows relative path: `/` separators, UTF-8."""
    return name.replace("\\", "/").encode("utf-8", "surrogateescape")


def basic_info_header(name: str, size: int, info: FileBasicInfo) -> TarHeader:
    """Build the PAX header of a file from its name, size and FILE_BASIC_INFO.

    The mode has no permission bits. Whether the entry is a directory comes only from
    FILE_ATTRIBUTE_DIRECTORY; a directory gets type `5`, mode 040000 and size 0.
    """
    header = TarHeader(
        name=tar_name(name),
        typeflag=b"0",
        size=size,
        mtime_ns=filetime_to_ns(info.last_write_time),
        atime_ns=filetime_to_ns(info.last_access_time),
        ctime_ns=filetime_to_ns(info.change_time),
        pax_records={
            PAX_FILEATTR: b"%d" % info.attributes,
            PAX_CREATIONTIME: format_pax_time(filetime_to_ns(info.creation_time)),
        },
        format_pax=True,
    )
    if info.attributes & FILE_ATTRIBUTE_DIRECTORY:
        header.mode |= MODE_DIR
        header.size = 0
        header.typeflag = b"5"
    return header


def _add_metadata(header: TarHeader, stream: BackupHeader, reader: BackupStreamReader) -> None:
    """Record a security, reparse or EA stream of the metadata pass in `header`."""
    if stream.id == StreamId.SECURITY:
        header.pax_records[PAX_RAWSD] = base64.b64encode(reader.read_all())
    elif stream.id == StreamId.REPARSE_DATA:
        header.mode |= MODE_LNK
        header.typeflag = b"2"
        point = decode_reparse_point(reader.read_all())
        if point.is_mount_point:
            header.pax_records[PAX_MOUNTPOINT] = b"1"
        header.linkname = point.target.encode("utf-8")
    elif stream.id == StreamId.EA_DATA:
        for item in decode_extended_attributes(reader.read_all()):
            header.pax_records[PAX_XATTR_PREFIX + item.name] = base64.b64encode(item.value)


def write_tar_file_from_backup_stream(
    tar: TarWriter,
    stream: BinaryIO,
    name: str,
    size: int,
    info: FileBasicInfo,
    *,
    seekable: bool = False,
    origin: int = 0,
) -> None:
    """Write the tar entries of one file from its backup stream.

    With `seekable` the stream is read twice: once for all metadata, then again from
    the start for the data, so EAs after the data are kept. Otherwise the metadata
    pass stops at the data stream. `origin` is where the backup stream starts in
    `stream`, for seeking and for error offsets. Alternate data streams after the
    data become `name:stream` entries. go-winio drops those before the data stream,
    and those of a file without one, and so does this function.
    """
    header = basic_info_header(name, size, info)
    reader = BackupStreamReader(stream, origin=origin, source=name)
    data: BackupHeader | None = None
    while (current := reader.next()) is not None:
        if current.id == StreamId.DATA:
            header.mode |= MODE_REG
            if not seekable:
                data = current
                break
        elif current.id in (StreamId.SECURITY, StreamId.REPARSE_DATA, StreamId.EA_DATA):
            _add_metadata(header, current, reader)
        elif current.id not in _SKIPPED_BEFORE_DATA:
            raise BackupStreamError(f"{name}: unknown stream ID {current.id}")
    tar.write_header(header)

    if seekable:
        reader.rewind(0)
        while (current := reader.next()) is not None:
            if current.id == StreamId.DATA:
                data = current
                break
    if data is not None:
        _copy_data(tar, reader, data, name, size)
    _write_alternate_streams(tar, reader, header, name)


def _copy_data(
    tar: TarWriter, reader: BackupStreamReader, data: BackupHeader, name: str, size: int
) -> None:
    if data.size > 0 or not data.attributes & StreamAttribute.SPARSE:
        if size != data.size:
            raise BackupStreamError(
                f"{name}: file size {size} does not match the data stream size {data.size}"
            )
        _copy_stream(tar, reader)
    elif size > 0:
        _copy_sparse(tar, reader, name)


def _copy_stream(tar: TarWriter, reader: BackupStreamReader) -> int:
    copied = 0
    while chunk := reader.read(_COPY_CHUNK):
        tar.write(chunk)
        copied += len(chunk)
    return copied


def _copy_sparse(tar: TarWriter, reader: BackupStreamReader, name: str) -> None:
    """Write sparse blocks as plain data, with zeros for the holes between them.

    The block of size 0 ends the list; its offset is the logical file size.
    """
    position = 0
    while True:
        block = reader.next()
        if block is None:
            raise BackupStreamError(
                f"{name}: backup stream ends before the sparse terminator block"
            )
        if block.id != StreamId.SPARSE_BLOCK:
            raise BackupStreamError(
                f"{name}: unexpected stream ID {block.id} among the sparse blocks"
            )
        if block.offset < position:
            raise BackupStreamError(
                f"{name}: sparse block at offset {block.offset} goes back before {position}"
            )
        tar.write_zeros(block.offset - position)
        if block.size == 0:
            return
        copied = _copy_stream(tar, reader)
        position = block.offset + copied


def _write_alternate_streams(
    tar: TarWriter, reader: BackupStreamReader, owner: TarHeader, name: str
) -> None:
    while (current := reader.next()) is not None:
        if current.id == StreamId.ALTERNATE_DATA:
            if current.attributes & StreamAttribute.SPARSE:
                raise BackupStreamError(
                    f"{name}: sparse alternate data stream {current.name!r} cannot go "
                    "into a tar; make the stream non-sparse first"
                )
            stream_name = current.name.removesuffix(_ADS_SUFFIX)
            tar.write_header(
                TarHeader(
                    name=owner.name + stream_name.encode("utf-8"),
                    typeflag=b"0",
                    mode=owner.mode,
                    size=current.size,
                    mtime_ns=owner.mtime_ns,
                    atime_ns=owner.atime_ns,
                    ctime_ns=owner.ctime_ns,
                    format_pax=True,
                )
            )
            _copy_stream(tar, reader)
        elif current.id not in _SKIPPED_AFTER_DATA:
            raise BackupStreamError(f"{name}: unknown stream ID {current.id} after the data")


def _header_time(header: TarHeader, ns: int | None) -> int:
    return ns_to_filetime(GO_ZERO_TIME_NS if ns is None else ns)


def file_info_from_header(header: TarHeader) -> tuple[str, int, FileBasicInfo]:
    """Return the name, size and FILE_BASIC_INFO that a tar header describes.

    The size counts only for regular files. A missing atime or ctime becomes the
    FILETIME of Go's zero time, and a missing creation time the mtime. Without a
    `MSWINDOWS.fileattr` record, directories get FILE_ATTRIBUTE_DIRECTORY and
    everything else 0.
    """
    name = header.name.decode("utf-8", "surrogateescape")
    size = header.size if header.typeflag == b"0" else 0
    records = header.pax_records
    creation_ns = header.mtime_ns
    if PAX_CREATIONTIME in records:
        try:
            creation_ns = parse_pax_time(records[PAX_CREATIONTIME])
        except ValueError as error:
            raise TarFormatError(f"{show(header.name)}: creation time: {error}") from error
    attributes = FILE_ATTRIBUTE_DIRECTORY if header.typeflag == b"5" else 0
    if PAX_FILEATTR in records:
        text = records[PAX_FILEATTR]
        # Leading zeros are stripped before int(), which rejects more than 4,300 digits.
        digits = text.lstrip(b"0") or b"0"
        if _DECIMAL.fullmatch(text) is None or len(digits) > 10 or int(digits) > 0xFFFFFFFF:
            raise TarFormatError(
                f"{show(header.name)}: invalid {PAX_FILEATTR.decode()} {show(text, 24)}; "
                "expected a decimal 32-bit number"
            )
        attributes = int(digits)
    info = FileBasicInfo(
        creation_time=ns_to_filetime(creation_ns),
        last_access_time=_header_time(header, header.atime_ns),
        last_write_time=ns_to_filetime(header.mtime_ns),
        change_time=_header_time(header, header.ctime_ns),
        attributes=attributes,
    )
    return name, size, info


def _base64(header: TarHeader, key: bytes) -> bytes:
    text = header.pax_records[key].replace(b"\r", b"").replace(b"\n", b"")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise TarFormatError(f"{show(header.name)}: {key.decode()} is not valid base64") from error


def security_descriptor_from_header(
    header: TarHeader, sddl_converter: SddlConverter | None = None
) -> bytes:
    """Return the binary security descriptor of a header, b"" when it has none.

    `MSWINDOWS.rawsd` wins. The legacy SDDL form `MSWINDOWS.sd` needs
    `sddl_converter` (a Windows API call), so without one it raises TarFormatError.
    """
    records = header.pax_records
    if PAX_RAWSD in records:
        return _base64(header, PAX_RAWSD)
    if PAX_SDDL in records:
        if sddl_converter is None:
            raise TarFormatError(
                f"{show(header.name)}: the SDDL security descriptor {PAX_SDDL.decode()} can only "
                "be converted on a Windows host"
            )
        return sddl_converter(records[PAX_SDDL].decode("utf-8", "surrogateescape"))
    return b""


def extended_attributes_from_header(header: TarHeader) -> bytes:
    """Return the EA stream of a header's `MSWINDOWS.xattr.*` records, b"" when none.

    go-winio takes them in Go's random map order; here they are sorted by name.
    """
    items = [
        ExtendedAttribute(key[len(PAX_XATTR_PREFIX) :], _base64(header, key))
        for key in sorted(header.pax_records)
        if key.startswith(PAX_XATTR_PREFIX)
    ]
    return encode_extended_attributes(items)


def reparse_point_from_header(header: TarHeader) -> bytes:
    """Encode the reparse data of a symlink header; backslashes replace slashes."""
    target = header.linkname.decode("utf-8", "replace").replace("/", "\\")
    return encode_reparse_point(ReparsePoint(target, PAX_MOUNTPOINT in header.pax_records))


def _write_stream(writer: BackupStreamWriter, stream_id: int, payload: bytes) -> None:
    writer.write_header(BackupHeader(stream_id, len(payload)))
    writer.write(payload)


def _copy_entry(writer: BackupStreamWriter, tar: TarInput) -> None:
    while chunk := tar.read(_COPY_CHUNK):
        writer.write(chunk)


def write_backup_stream_from_tar_file(
    writer: BackupStreamWriter,
    tar: TarInput,
    header: TarHeader,
    *,
    sddl_converter: SddlConverter | None = None,
) -> TarHeader | None:
    """Write the backup stream of `header`, then of the ADS entries that follow it.

    The streams come in go-winio's order: security descriptor, EAs, reparse data,
    the data (even when empty), then each following regular entry named
    `<name>:<stream>` as the alternate data stream `:<stream>:$DATA`. Returns the
    first header that is not such an entry, or None at the end of the tar.
    """
    security = security_descriptor_from_header(header, sddl_converter)
    if security:
        _write_stream(writer, StreamId.SECURITY, security)
    extended = extended_attributes_from_header(header)
    if extended:
        _write_stream(writer, StreamId.EA_DATA, extended)
    if header.typeflag == b"2":
        _write_stream(writer, StreamId.REPARSE_DATA, reparse_point_from_header(header))
    if header.typeflag == b"0":
        writer.write_header(BackupHeader(StreamId.DATA, header.size))
        _copy_entry(writer, tar)

    prefix = header.name + b":"
    while True:
        following = tar.next()
        if following is None:
            return None
        if following.typeflag != b"0" or not following.name.startswith(prefix):
            return following
        stream_name = following.name[len(header.name) :].decode("utf-8", "surrogateescape")
        writer.write_header(
            BackupHeader(StreamId.ALTERNATE_DATA, following.size, stream_name + _ADS_SUFFIX)
        )
        _copy_entry(writer, tar)
