"""The path tree that records a layer's paths: exact values, ancestors and memory."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from ocilayer.apply.pathtree import PathTree

ANCESTOR = "ancestor"


class NaiveTree:
    """The same map with every ancestor stored as its own key: obviously right, but big."""

    def __init__(self) -> None:
        self.values: dict[bytes, str] = {}

    def get(self, path: bytes) -> str | None:
        if path in self.values:
            return self.values[path]
        prefix = path + b"/"
        return ANCESTOR if any(key.startswith(prefix) for key in self.values) else None

    def set(self, path: bytes, value: str) -> None:
        self.values[path] = value

    def discard(self, path: bytes) -> None:
        self.values.pop(path, None)


def test_values_and_ancestors() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    tree[b"a/b/c"] = "file"
    assert tree.get(b"a/b/c") == "file"
    assert tree.get(b"a/b") == ANCESTOR
    assert tree.get(b"a") == ANCESTOR
    assert tree.get(b"a/b/c/d") is None
    assert tree.get(b"a/bc") is None
    assert tree.get(b"a/b/") is None
    assert tree.get(b"") is None
    assert b"a/b" in tree
    assert b"b" not in tree


def test_values_on_ancestors_and_splits() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    tree[b"a/b/c/d"] = "file"
    tree[b"a/b"] = "directory"
    tree[b"a/b/x"] = "other"
    tree[b"a/bb"] = "sibling"
    assert tree.get(b"a/b/c/d") == "file"
    assert tree.get(b"a/b/c") == ANCESTOR
    assert tree.get(b"a/b") == "directory"
    assert tree.get(b"a/b/x") == "other"
    assert tree.get(b"a/bb") == "sibling"
    assert tree.get(b"a") == ANCESTOR
    tree[b"a/b"] = "replaced"
    assert tree.get(b"a/b") == "replaced"


def test_discard_keeps_ancestors_of_others() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    tree[b"a/b"] = "directory"
    tree[b"a/b/c"] = "file"
    tree[b"a/d"] = "file"
    tree.discard(b"a/b")
    assert tree.get(b"a/b") == ANCESTOR
    tree.discard(b"a/b/c")
    assert tree.get(b"a/b") is None
    assert tree.get(b"a/b/c") is None
    assert tree.get(b"a") == ANCESTOR
    tree.discard(b"a")
    assert tree.get(b"a") == ANCESTOR
    tree.discard(b"a/d")
    assert tree.get(b"a") is None
    tree.discard(b"never/recorded")
    assert tree.get(b"never") is None


def test_empty_path_is_rejected() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    with pytest.raises(ValueError, match="the empty path"):
        tree[b""] = "root"


def test_set_children_every_parent_kind() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    # The root, a parent that is not recorded, and one that ends inside a long label.
    tree.set_children(b"", [b"x", b"y"], "file")
    tree.set_children(b"new/dir", [b"p", b"q", b"r"], "file")
    tree[b"deep/er/still"] = "directory"
    tree.set_children(b"deep/er", [b"s", b"t"], "file")
    # A name recorded already takes the new value and keeps its children.
    tree[b"new/dir/p/under"] = "file"
    tree.set_children(b"new/dir", [b"p", b"u"], "directory")
    expected = {
        b"x": "file", b"y": "file", b"new": ANCESTOR, b"new/dir": ANCESTOR,
        b"new/dir/p": "directory", b"new/dir/p/under": "file", b"new/dir/q": "file",
        b"new/dir/r": "file", b"new/dir/u": "directory", b"deep": ANCESTOR,
        b"deep/er": ANCESTOR, b"deep/er/still": "directory", b"deep/er/s": "file",
        b"deep/er/t": "file", b"deep/er/u": None, b"z": None,
    }  # fmt: skip
    assert {path: tree.get(path) for path in expected} == expected


def test_run_of_leaves_adds_no_tracked_object() -> None:
    """Leaves stored by set_children do not feed Python's cycle collector."""
    tree: PathTree[str] = PathTree(ANCESTOR)
    tree[b"dir"] = "directory"
    names = [b"f%04d" % index for index in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    tree.set_children(b"dir", names[:2500], "file")
    tree.set_children(b"dir", names[2500:], "file")
    # One dict for the parent's children may become tracked; nothing per name.
    assert len(gc.get_objects()) - before <= 2
    assert tree.get(b"dir/f4999") == "file"


def test_bare_leaves_become_nodes_when_walked_into() -> None:
    tree: PathTree[str] = PathTree(ANCESTOR)
    tree.set_children(b"", [b"a", b"b"], "file")
    tree.set_children(b"a", [b"x"], "file")  # `a` is a bare leaf: the general case
    tree[b"b/c/d"] = "directory"  # a path below a bare leaf
    tree.set_children(b"b/c", [b"e", b"f"], "file")
    tree.discard(b"b/c/d")
    tree.discard(b"b/c/e")  # `b/c` is left with one bare leaf child, `f`
    tree.discard(b"b/c")
    expected = {
        b"a": "file", b"a/x": "file", b"b": "file", b"b/c": ANCESTOR,
        b"b/c/d": None, b"b/c/e": None, b"b/c/f": "file", b"b/c/f/g": None,
    }  # fmt: skip
    assert {path: tree.get(path) for path in expected} == expected
    tree.discard(b"b")
    assert tree.get(b"b") == ANCESTOR
    assert tree.get(b"b/c/f") == "file"


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_match_naive_map(seed: int) -> None:
    rng = random.Random(seed)
    tree: PathTree[str] = PathTree(ANCESTOR)
    naive = NaiveTree()
    names = [b"a", b"b", b"ab", b"a.b", b"\xff"]

    def random_path() -> bytes:
        return b"/".join(rng.choice(names) for _ in range(rng.randint(1, 6)))

    for _ in range(600):
        path = random_path()
        action = rng.random()
        if action < 0.5:
            value = rng.choice(["file", "directory", ANCESTOR])
            tree[path] = value
            naive.set(path, value)
        elif action < 0.65:
            tree.discard(path)
            naive.discard(path)
        elif action < 0.8:
            # A run of files in one directory, which may be the root.
            parent = path if rng.random() < 0.8 else b""
            children = rng.sample(names, rng.randint(1, len(names)))
            value = rng.choice(["file", "directory"])
            tree.set_children(parent, children, value)
            for child in children:
                naive.set(parent + b"/" + child if parent else child, value)
            path = parent + b"/" + children[-1] if parent else children[-1]
        for probe in (path, random_path(), path.rpartition(b"/")[0]):
            if probe:
                assert tree.get(probe) == naive.get(probe), probe


def test_memory_grows_with_name_bytes_not_depth() -> None:
    """Deep unique chains used quadratic memory when every ancestor was its own key."""
    depth = 2000
    chain = b"/".join([b"a"] * depth)
    paths = [b"%d/%s" % (index, chain) for index in range(50)]
    name_bytes = sum(len(path) for path in paths)
    tracemalloc.start()
    try:
        tree: PathTree[str] = PathTree(ANCESTOR)
        for path in paths:
            tree[path] = "file"
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The ancestors' keys alone took about 50 * depth**2 = 200 MB before.
    assert used < 2 * name_bytes + 50 * 1024
    assert tree.get(paths[7]) == "file"
    assert tree.get(paths[7].rpartition(b"/")[0]) == ANCESTOR
