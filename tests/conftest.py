"""Shared test helpers: where the fixtures live (tests/fixtures, see its README.md), and how a test asks for one."""
import atexit
import functools
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

# One thread, here and in every process a test starts: the tests' tensors are small, a second thread gives them
# nothing, and on a busy machine threads that wait for each other at every operator cost minutes.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
HERE_FIXTURES = ROOT / "tests" / "fixtures"  # every fixture the suite needs, committed with it

sys.path.insert(0, str(ROOT))


def fixture(*parts) -> Path:
    """The path tests/fixtures/<parts>. A file stored gzip-compressed as <parts>.gz (the large tokenizer.json
    files) is decompressed once per session into a temporary folder, and that copy's path is returned."""
    path = HERE_FIXTURES.joinpath(*parts)
    if path.exists() or not path.with_name(path.name + ".gz").is_file():
        return path
    return unpacked(path)


@functools.cache
def unpacked(path: Path) -> Path:
    copy = Path(unpacked_root()) / path.relative_to(HERE_FIXTURES)
    copy.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path.with_name(path.name + ".gz")) as src, open(copy, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return copy


@functools.cache
def unpacked_root() -> str:
    folder = tempfile.mkdtemp(prefix="pera-fixtures-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
