"""containerd as the oracle: on generated tree pairs, ocilayer writes WriteDiff's bytes.

Each seed builds a lower tree and an upper tree changed from it (additions, deletions,
type changes, chmod and chown, hardlinks, symlinks, long and non-UTF-8 names, xattrs,
FIFOs and devices), then compares ocilayer's layer, with only `security.capability`
carried as containerd does, with the layer containerd's own `archive.WriteDiff`
writes for the same pair. Whiteout mtimes are the one allowed difference: containerd
1.6 writes the current time there and ocilayer writes 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import peers
from layer_helpers import export_bytes
from ocilayer import XattrPolicy
from treegen import build_pair, generate_pair

SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_diff_matches_containerd(tmp_path: Path, seed: int, go_writediff: Path) -> None:
    pair = generate_pair(seed)
    lower, upper = build_pair(tmp_path, pair)

    data, _ = export_bytes(upper, [lower], xattrs=XattrPolicy.CAPABILITY, check_peers=False)

    try:
        peers.assert_matches_containerd(data, lower, upper)
    except AssertionError as error:
        raise AssertionError(f"{pair.describe()}\n{error}") from None


@pytest.mark.parametrize("seed", range(10))
def test_base_layer_matches_containerd(tmp_path: Path, seed: int, go_writediff: Path) -> None:
    pair = generate_pair(seed)
    _, upper = build_pair(tmp_path, pair)

    data, _ = export_bytes(upper, xattrs=XattrPolicy.CAPABILITY, check_peers=False)

    peers.assert_matches_containerd(data, None, upper)
