"""The HCS export sequence on a Windows host, run against a fake vmcompute binding."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from ocilayer.errors import Cancelled, LayerError
from ocilayer.windows import WindowsLayout, export_windows_layer
from ocilayer.windows.backupstream import BackupHeader, StreamId
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.hcs import HcsError, LayerDescriptor, export_layer_on_host
from ocilayer.windows.hostfiles import PortableHostFiles
from windows_helpers import make_dir, tombstones, write_plain, write_transport_file

DIR = FileBasicInfo(
    132444736000000000, 132444736000000000, 132444736000000000, 132444736000000000, 0x10
)
FILE = FileBasicInfo(
    132444736000000000, 132444736000000000, 132444736000000000, 132444736000000000, 0x20
)
ACCESS_DENIED = 0x80070005


def write_transport(root: Path, complete: bool = True) -> None:
    make_dir(root / "Files", DIR)
    write_transport_file(
        root / "Files/new.txt", 0x20, FILE, (BackupHeader(StreamId.DATA, 2), b"hi")
    )
    make_dir(root / "Hives", DIR)
    write_plain(root / "Hives/System_Delta", b"regf", FILE)
    if complete:
        (root / "tombstones.txt").write_bytes(tombstones("\\old.txt"))


class FakeVmcompute:
    """Records every call; `failures` maps a call name to the HRESULT it returns."""

    def __init__(self, failures: dict[str, int] | None = None, complete: bool = True) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.failures = failures or {}
        self.complete = complete
        self.export_folder = ""

    def _result(self, name: str) -> int:
        return self.failures.get(name, 0)

    def activate_layer(self, path: str) -> int:
        self.calls.append(("activate", path))
        return self._result("activate")

    def deactivate_layer(self, path: str) -> int:
        self.calls.append(("deactivate", path))
        return self._result("deactivate")

    def prepare_layer(self, path: str, parents: Sequence[LayerDescriptor]) -> int:
        self.calls.append(("prepare", path, tuple(parents)))
        return self._result("prepare")

    def unprepare_layer(self, path: str) -> int:
        self.calls.append(("unprepare", path))
        return self._result("unprepare")

    def export_layer(
        self, path: str, export_folder: str, parents: Sequence[LayerDescriptor]
    ) -> int:
        self.calls.append(("export", path, tuple(parents)))
        self.export_folder = export_folder
        assert os.listdir(export_folder) == []
        write_transport(Path(export_folder), self.complete)
        return self._result("export")

    def name_to_guid(self, name: str) -> tuple[int, bytes]:
        self.calls.append(("guid", name))
        return self._result("guid"), name.encode().ljust(16, b"\x00")[:16]


def run(fake: FakeVmcompute, layer: str, parents: list[str], **options: object) -> bytes:
    out = io.BytesIO()
    export_layer_on_host(out, layer, parents, binding=fake, host=PortableHostFiles(), **options)  # type: ignore[arg-type]
    return out.getvalue()


def test_diff_layer_sequence(tmp_path: Path) -> None:
    fake = FakeVmcompute()
    parents = [str(tmp_path / "base"), str(tmp_path / "mid")]
    data = run(fake, "L", parents)
    descriptors = (
        LayerDescriptor(b"base".ljust(16, b"\x00"), 0, parents[0]),
        LayerDescriptor(b"mid".ljust(16, b"\x00"), 0, parents[1]),
    )
    assert fake.calls == [
        ("activate", "L"),
        ("guid", "base"),
        ("guid", "mid"),
        ("prepare", "L", descriptors),
        ("unprepare", "L"),
        ("export", "L", descriptors),
        ("deactivate", "L"),
    ]
    assert not os.path.exists(fake.export_folder)
    # The tar is the transport folder's, exactly as exporting the folder directly gives.
    write_transport(tmp_path / "same")
    direct = io.BytesIO()
    export_windows_layer(direct, tmp_path / "same", layout=WindowsLayout.TRANSPORT)
    assert data == direct.getvalue()


def test_base_layer_sequence(tmp_path: Path) -> None:
    make_dir(tmp_path / "Files", DIR, b"sd")
    write_plain(tmp_path / "Files/a.txt", b"a", FILE, b"sd")
    fake = FakeVmcompute()
    data = run(fake, str(tmp_path), [])
    assert fake.calls == [
        ("activate", str(tmp_path)),
        ("prepare", str(tmp_path), ()),
        ("unprepare", str(tmp_path)),
        ("deactivate", str(tmp_path)),
    ]
    direct = io.BytesIO()
    export_windows_layer(direct, tmp_path, layout=WindowsLayout.BASE)
    assert data == direct.getvalue()


@pytest.mark.parametrize(
    ("failing", "operation"),
    [
        ("guid", "NameToGuid"),
        ("prepare", "PrepareLayer"),
        ("unprepare", "UnprepareLayer"),
        ("export", "ExportLayer"),
    ],
)
def test_failure_still_deactivates(tmp_path: Path, failing: str, operation: str) -> None:
    fake = FakeVmcompute({failing: ACCESS_DENIED})
    with pytest.raises(HcsError) as caught:
        run(fake, "L", [str(tmp_path / "parent")])
    assert caught.value.hresult == ACCESS_DENIED
    assert caught.value.operation == operation
    assert f"{operation} failed for layer " in str(caught.value)
    assert "HRESULT 0x80070005 (access is denied)" in str(caught.value)
    assert fake.calls[-1] == ("deactivate", "L")
    assert fake.export_folder == "" or not os.path.exists(fake.export_folder)


def test_activate_failure_skips_the_rest() -> None:
    fake = FakeVmcompute({"activate": -2147024894})  # 0x80070002 as a signed HRESULT
    with pytest.raises(
        HcsError, match=r"ActivateLayer failed for layer 'L' with HRESULT 0x80070002"
    ):
        run(fake, "L", [])
    assert fake.calls == [("activate", "L")]


def test_read_error_still_cleans_up(tmp_path: Path) -> None:
    fake = FakeVmcompute(complete=False)
    with pytest.raises(LayerError, match=r"tombstones\.txt' is missing"):
        run(fake, "L", [str(tmp_path / "parent")])
    assert fake.calls[-1] == ("deactivate", "L")
    assert not os.path.exists(fake.export_folder)


def test_cancel_still_cleans_up(tmp_path: Path) -> None:
    fake = FakeVmcompute()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run(fake, "L", [str(tmp_path / "parent")], cancel=cancel)
    assert fake.calls[-1] == ("deactivate", "L")
    assert not os.path.exists(fake.export_folder)


def test_deactivate_failure_does_not_fail_export(tmp_path: Path) -> None:
    fake = FakeVmcompute({"deactivate": ACCESS_DENIED})
    data = run(fake, "L", [str(tmp_path / "parent")])
    assert data.endswith(bytes(1024))


def test_no_binding_off_windows() -> None:
    with pytest.raises(LayerError, match="only on a Windows host"):
        export_layer_on_host(io.BytesIO(), "L", [])
