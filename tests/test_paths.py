"""slipio.paths.resolve_inside: every path read from a manifest/record/run folder is checked before use."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from slipio.paths import UnsafePath, check_relpath, resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "release"
    (r / "shards").mkdir(parents=True)
    (r / "shards" / "train-000000.tar").write_bytes(b"x")
    (r / "nodes.parquet").write_bytes(b"y")
    (tmp_path / "secret.txt").write_text("host secret")
    return r


def test_plain_relative_paths_resolve_inside(root: Path) -> None:
    assert resolve_inside(root, "nodes.parquet") == root / "nodes.parquet"
    assert resolve_inside(root, "shards/train-000000.tar") == root / "shards" / "train-000000.tar"
    assert resolve_inside(root, "shards", kind="dir") == root / "shards"
    # not there yet: allowed (a writer may use the same check), still inside
    assert resolve_inside(root, "plots/new.png") == root / "plots" / "new.png"


@pytest.mark.parametrize(
    ("rel", "rule"),
    [
        ("../secret.txt", "'..'"),
        ("shards/../../secret.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty segments"),
        ("shards/", "empty segments"),
        ("./nodes.parquet", "'.' segments"),
        ("shards\\train-000000.tar", "backslash"),
        ("..\\secret.txt", "backslash"),
        ("nodes.parquet\x00.txt", "NUL"),
        ("", "empty"),
        (None, "string"),
        (["nodes.parquet"], "string"),
    ],
)
def test_lexical_rules(root: Path, rel: object, rule: str) -> None:
    with pytest.raises(UnsafePath, match=rule) as err:
        resolve_inside(root, rel)
    assert repr(rel) in str(err.value)  # the message names the path
    with pytest.raises(UnsafePath):
        check_relpath(rel)


def test_symlink_to_outside_is_refused(root: Path) -> None:
    (root / "leak.txt").symlink_to(root.parent / "secret.txt")
    with pytest.raises(UnsafePath, match="symlink"):
        resolve_inside(root, "leak.txt")


def test_symlink_to_inside_is_refused_too(root: Path) -> None:
    (root / "alias.parquet").symlink_to(root / "nodes.parquet")
    with pytest.raises(UnsafePath, match="symlink"):
        resolve_inside(root, "alias.parquet")


def test_symlinked_folder_on_the_way_is_refused(root: Path) -> None:
    (root / "up").symlink_to(root.parent, target_is_directory=True)
    with pytest.raises(UnsafePath, match="'up' is a symlink"):
        resolve_inside(root, "up/secret.txt")
    with pytest.raises(UnsafePath, match="symlink"):
        resolve_inside(root, "up", kind="dir")


def test_fifo_is_not_a_regular_file(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(UnsafePath, match="FIFO"):
        resolve_inside(root, "pipe")  # must not block: the check never opens the path


def test_socket_is_not_a_regular_file(root: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = root / "s"
    try:
        sock.bind(str(path))
    except OSError:  # path too long for AF_UNIX on this machine
        pytest.skip("cannot bind a unix socket under tmp_path")
    try:
        with pytest.raises(UnsafePath, match="socket"):
            resolve_inside(root, "s")
    finally:
        sock.close()


def test_device_file_is_not_a_regular_file(tmp_path: Path) -> None:
    # /dev/null is a character device that exists everywhere; check it as a path inside the root "/dev"
    with pytest.raises(UnsafePath, match="character device"):
        resolve_inside(Path("/dev"), "null")


def test_kind_mismatch(root: Path) -> None:
    with pytest.raises(UnsafePath, match="not a folder"):
        resolve_inside(root, "nodes.parquet", kind="dir")
    with pytest.raises(UnsafePath, match="regular file, not a folder"):
        resolve_inside(root, "shards")
    with pytest.raises(UnsafePath, match="not a folder"):
        resolve_inside(root, "nodes.parquet/x")


def test_unsafe_path_is_a_value_error(root: Path) -> None:
    with pytest.raises(ValueError):
        resolve_inside(root, "../x")
