"""zriver.bundle.child_environment: the environment children get, frozen or not."""

from __future__ import annotations

import os
import sys

import pytest

from zriver import bundle

BUNDLE_DIR = "/tmp/_MEIabc123"

CASES = [
    # id, frozen, base environment, expected child environment
    ("plain-unchanged", False, {"PATH": "/bin", "LD_LIBRARY_PATH": "/opt/lib"},
     {"PATH": "/bin", "LD_LIBRARY_PATH": "/opt/lib"}),
    ("plain-keeps-orig-key", False, {"LD_LIBRARY_PATH": BUNDLE_DIR, "LD_LIBRARY_PATH_ORIG": "/x"},
     {"LD_LIBRARY_PATH": BUNDLE_DIR, "LD_LIBRARY_PATH_ORIG": "/x"}),
    ("plain-empty", False, {}, {}),
    ("frozen-restores-orig", True,
     {"PATH": "/bin", "LD_LIBRARY_PATH": f"{BUNDLE_DIR}:/opt/lib", "LD_LIBRARY_PATH_ORIG": "/opt/lib"},
     {"PATH": "/bin", "LD_LIBRARY_PATH": "/opt/lib"}),
    ("frozen-removes-without-orig", True, {"PATH": "/bin", "LD_LIBRARY_PATH": BUNDLE_DIR},
     {"PATH": "/bin"}),
    ("frozen-restores-empty-orig", True, {"LD_LIBRARY_PATH": BUNDLE_DIR, "LD_LIBRARY_PATH_ORIG": ""},
     {"LD_LIBRARY_PATH": ""}),
    ("frozen-orig-only", True, {"LD_LIBRARY_PATH_ORIG": "/opt/lib"}, {"LD_LIBRARY_PATH": "/opt/lib"}),
    ("frozen-neither", True, {"HOME": "/root"}, {"HOME": "/root"}),
    ("frozen-drops-bootloader-vars", True,
     {"PATH": "/bin", "_PYI_APPLICATION_HOME_DIR": BUNDLE_DIR, "_PYI_ARCHIVE_FILE": "/bin/zriver",
      "_PYI_PARENT_PROCESS_LEVEL": "0", "_MEIPASS2": BUNDLE_DIR, "LD_LIBRARY_PATH": BUNDLE_DIR,
      "_ZRIVER_BINARY": "/usr/local/bin/zriver"},
     {"PATH": "/bin"}),
    ("plain-keeps-bootloader-vars", False, {"_PYI_ARCHIVE_FILE": "/x"}, {"_PYI_ARCHIVE_FILE": "/x"}),
]


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch):
    def set_frozen(value: bool) -> None:
        if value:
            monkeypatch.setattr(sys, "frozen", True, raising=False)
        else:
            monkeypatch.delattr(sys, "frozen", raising=False)

    return set_frozen


@pytest.mark.parametrize(("frozen_", "base", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_child_environment_from_base(frozen, frozen_, base, expected):
    frozen(frozen_)
    before = dict(base)
    result = bundle.child_environment(base)
    assert result == expected
    assert base == before, "the base mapping must not be modified"
    assert result is not base


@pytest.mark.parametrize(("frozen_", "base", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_child_environment_defaults_to_os_environ(monkeypatch, frozen, frozen_, base, expected):
    frozen(frozen_)
    for key in ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH_ORIG", "PATH", "HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in base.items():
        monkeypatch.setenv(key, value)
    result = bundle.child_environment()
    for key in ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH_ORIG", "PATH", "HOME"):
        assert result.get(key) == expected.get(key), key
    # The process's own environment is left alone: only the copy changes.
    for key, value in base.items():
        assert os.environ[key] == value


@pytest.mark.parametrize(("value", "expected"), [(True, True), (1, True), (False, False), (None, False)])
def test_is_frozen(monkeypatch, value, expected):
    monkeypatch.setattr(sys, "frozen", value, raising=False)
    assert bundle.is_frozen() is expected


def test_is_frozen_without_attribute(monkeypatch):
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert bundle.is_frozen() is False


def test_binary_path_is_the_file_the_stub_names(monkeypatch, tmp_path):
    binary = tmp_path / "zriver"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("_ZRIVER_BINARY", str(binary))
    assert bundle.binary_path() == str(binary)
    monkeypatch.setenv("_ZRIVER_BINARY", str(tmp_path / "gone"))  # not a file: the program
    assert bundle.binary_path() == sys.executable
    monkeypatch.delenv("_ZRIVER_BINARY")
    assert bundle.binary_path() == sys.executable
