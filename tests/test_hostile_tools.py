"""The hostile-input table (issue 34) for prepare.py, generate.py and merge.py: each case ends the command with one
line naming the culprit, a non-zero exit and no traceback, and leaves every file and folder it was given as it was.

The cases run in this process as `python tool.py ARGS` would (cli.run(main, argv)), on stories260K and an adapter
that train.py made in two steps; the ones that need a real process (a closed pipe, a full disk, the C locale) run
the tool as one.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, fixture

import generate
import merge
import prepare
import train
from support import cli
from test_robustness import data_dir, stories_dir  # noqa: F401  (fixtures: stories260K, small copies of the data)

RECORD = {"instruction": "Is it?", "input": "", "output": "the correct answer is true", "answer": "true"}
TOOLS = {"prepare": prepare.main, "generate": generate.main, "merge": merge.main}


@pytest.fixture(scope="module")
def adapter(stories_dir, data_dir, tmp_path_factory):
    """A LoRA adapter after two steps of train.py."""
    out = tmp_path_factory.mktemp("adapter")
    train.main(["--model", str(stories_dir), "--data", str(data_dir), "--out", str(out), "--method", "lora", "--rank", "4",
                "--batch-size", "8", "--val-size", "0", "--warmup-steps", "1", "--max-steps", "2", "--device", "cpu"])
    return out


class Case:
    """What a case builds, in the test's own tmp folder (the command runs there, so `.` is that folder)."""

    def __init__(self, stories_dir, adapter, tmp):
        self.stories_dir, self.tmp = stories_dir, tmp
        self.adapter = shutil.copytree(adapter, tmp / "adapter")

    def file(self, name, text="the user's"):
        (self.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (self.tmp / name).write_text(text)
        return self.tmp / name

    def folder(self, name):
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return self.tmp / name

    def gguf(self, out, *extra):
        return ["--gguf", str(fixture("gguf", "tiny-q.gguf")), "--out", str(out), *extra]

    def data_from(self, folder):
        return ["--skip-model", "--data-from", str(folder), "--data-dir", str(self.tmp / "data"), "--no-170k"]

    def users_model_folder(self):
        self.file("mine/config.json", '{"mine": true}')
        self.file("mine/notes.txt")
        return self.tmp / "mine"

    def generate(self, *extra, text="Once upon a time", model=None):
        return ["--model", str(model or self.stories_dir), "--device", "cpu", "--max-new-tokens", "4", "--raw", *extra, text]

    def no_bos_model(self):
        model = shutil.copytree(self.stories_dir, self.tmp / "no-bos")
        config = json.loads((model / "tokenizer_config.json").read_text())
        (model / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": None, "add_bos_token": False}))
        return model

    def merge(self, out="merged", adapter=None):
        return ["--adapter", str(adapter or self.adapter), "--model", str(self.stories_dir), "--out", str(out)]

    def base_with(self, name, make):
        """A copy of stories260K with its file `name` made by make(path) (replacing the one there)."""
        base = shutil.copytree(self.stories_dir, self.tmp / "base")
        (base / name).unlink(missing_ok=True)
        make(base / name)
        return base

    def adapter_with(self, name, make):
        """The adapter with its file `name` replaced by make(path)."""
        (self.adapter / name).unlink()
        make(self.adapter / name)
        return self.adapter


# name: (tool, argv built from a Case, the texts the error line must hold)
CASES = {
    # prepare.py
    "prepare --gguf --out the user's folder (a config.json in it)": (
        "prepare", lambda c: c.gguf(c.users_model_folder()), ["mine already holds files", "--overwrite"]),
    "prepare --gguf --out a file": ("prepare", lambda c: c.gguf(c.file("model")), ["model is a file", "must be a folder"]),
    "prepare --gguf --out inside a file": ("prepare", lambda c: c.gguf(c.file("model") / "sub"), ["model/sub: ", "model is a file, not a folder"]),
    "prepare --gguf --out where a folder holds model.safetensors": (
        "prepare", lambda c: c.gguf(c.folder("m/model.safetensors").parent, "--overwrite"),
        ["model.safetensors is a folder"]),
    "prepare --gguf a folder": ("prepare", lambda c: ["--gguf", str(c.folder("g.gguf")), "--out", str(c.tmp / "o")],
                                ["g.gguf"]),
    "prepare --data-from an empty folder": ("prepare", lambda c: c.data_from(c.folder("empty")),
                                            ["--data-from", "empty: holds none of the data files"]),
    "prepare --data-from a model folder": ("prepare", lambda c: c.data_from(c.stories_dir),
                                           ["--data-from", "stories260K: holds none of the data files"]),
    "prepare --data-from: a data file that is a folder": (
        "prepare", lambda c: c.data_from(c.folder("src/boolq/test.json").parents[1]),
        ["boolq/test.json", "a folder or a device"]),
    "prepare --data-from a file": ("prepare", lambda c: c.data_from(c.file("src")), ["--data-from", "src: no such folder"]),
    "prepare --data-url without a scheme": ("prepare", lambda c: ["--skip-model", "--data-url", "mirror/dataset"],
                                            ["--data-url", "'mirror/dataset'", "http://"]),
    "prepare --data-dir a file": ("prepare", lambda c: c.data_from(fixture("commonsense"))[:3] + ["--data-dir", str(
        c.file("data-file")), "--no-170k"], ["--data-dir", "data-file is a file, not a folder"]),
    "prepare --data-from: commonsense_170k.json a folder": (
        "prepare", lambda c: c.file("src/boolq/test.json", json.dumps([RECORD])) and c.data_from(
            c.folder("src/commonsense_170k.json").parent)[:-1],
        ["commonsense_170k.json", "a folder or a device"]),
    "prepare --data-from: a data file nested 100,000 deep": (
        "prepare", lambda c: c.data_from(c.file("src/boolq/test.json", "[" * 100_000 + "]" * 100_000).parents[1]),
        ["boolq/test.json", "nested too deeply"]),
    # generate.py
    "generate --raw '' (no BOS token)": ("generate", lambda c: c.generate(text="", model=c.no_bos_model()),
                                         ["the prompt is empty", "BOS"]),
    "generate --temperature 1e-40": ("generate", lambda c: c.generate("--temperature", "1e-40"),
                                     ["--temperature", "'1e-40'", ">= 1e-06"]),
    # merge.py
    "merge --out .": ("merge", lambda c: c.merge("."), ["error: . already exists"]),
    "merge --out /": ("merge", lambda c: c.merge("/"), ["--out /", "root folder"]),
    "merge --out a file": ("merge", lambda c: c.merge(c.file("merged")), ["merged is a file", "must be a folder"]),
    "merge --out inside a file": ("merge", lambda c: c.merge(c.file("merged") / "x"), ["merged is a file, not a folder"]),
    "merge --out beside a .partial file": ("merge", lambda c: c.file(".merged.partial") and c.merge(c.tmp / "merged"),
                                           [".merged.partial is in the way"]),
    "merge: adapter_model.safetensors -> /dev/zero": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_model.safetensors", lambda p: p.symlink_to("/dev/zero"))), ["adapter_model.safetensors", "not a regular file"]),
    "merge: adapter_model.safetensors a folder": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_model.safetensors", Path.mkdir)), ["adapter_model.safetensors is a folder"]),
    "merge: adapter_config.json a folder": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_config.json", Path.mkdir)), ["adapter_config.json is a folder"]),
    "generate: adapter_model.safetensors -> /dev/zero": ("generate", lambda c: c.generate("--adapter", str(
        c.adapter_with("adapter_model.safetensors", lambda p: p.symlink_to("/dev/zero")))),
        ["adapter_model.safetensors"]),
    "generate: config.json eos_token_id \"2\"": ("generate", lambda c: c.generate(model=c.base_with(
        "config.json", lambda p: p.write_text(json.dumps({**json.loads((c.stories_dir / "config.json").read_text()),
                                                          "eos_token_id": "2"})))), ["config.json", "eos_token_id", "'2'"]),
    "merge: adapter_config.json -> /dev/zero": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_config.json", lambda p: p.symlink_to("/dev/zero"))), ["adapter_config.json", "not a regular file"]),
    "merge: adapter_config.json not UTF-8 (with --model)": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_config.json", lambda p: p.write_bytes(b'{"r": "\xe9"}'))), ["adapter_config.json", "not valid JSON"]),
    "merge: adapter_config.json a JSON list": ("merge", lambda c: c.merge(adapter=c.adapter_with(
        "adapter_config.json", lambda p: p.write_text("[]"))), ["adapter_config.json", "JSON object", "got a list"]),
    "merge: base_model_name_or_path a number": ("merge", lambda c: ["--adapter", str(c.adapter_with(
        "adapter_config.json", lambda p: p.write_text('{"base_model_name_or_path": 5}'))), "--out", "merged"],
        ["adapter_config.json", "'base_model_name_or_path' is 5", "--model DIR"]),
    "merge: the base's merged_from.json -> /dev/zero": ("merge", lambda c: c.merge() + ["--model", str(c.base_with(
        "merged_from.json", lambda p: p.symlink_to("/dev/zero")))], ["merged_from.json", "not a regular file"]),
    "merge: the base's tokenizer.json a folder": ("merge", lambda c: c.merge() + ["--model", str(c.base_with(
        "tokenizer.json", Path.mkdir))], ["tokenizer.json is a folder"]),
}


def tree(folder):
    """Every path under folder, with a file's bytes (a link's target): what a refused command leaves as it was.
    data/ is prepare.py's own --data-dir, which a data step may fill before a later one fails."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            for p in sorted(Path(folder).rglob("*")) if p.relative_to(folder).parts[0] != "data"}


def outcome(main, argv, capsys):
    """(exit status, the last line printed) of `python tool.py argv`, run here; prepare.py returns its status."""
    try:
        code = cli.run(main, argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if isinstance(code, str):  # sys.exit("error: ..."): Python prints the text, exit status 1
        return 1, code
    return code, err.strip().splitlines()[-1] if err.strip() else ""


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_one_line_naming_the_culprit(name, stories_dir, adapter, tmp_path, capsys, monkeypatch):
    tool, build, culprit = CASES[name]
    monkeypatch.chdir(tmp_path)
    case = Case(stories_dir, adapter, tmp_path)
    argv = build(case)
    before = tree(tmp_path)
    code, line = outcome(TOOLS[tool], argv, capsys)
    assert code in (1, 2) and "error: " in line and "\n" not in line, (code, line)
    assert all(text in line for text in culprit), line
    assert tree(tmp_path) == before  # nothing written, nothing removed


# -----------------------------------------------------------------------------
# What needs a process of its own: a reader that stops reading, a full disk, the C locale

def run_generate(*argv, stdout=subprocess.PIPE, env=None, shell_tail=""):
    command = [sys.executable, str(ROOT / "generate.py"), "--model", str(fixture("models", "stories260K")),
               "--device", "cpu", "--raw", *argv]
    if shell_tail:  # `generate.py ... | head -c1`: the shell's pipe, closed by head after one byte
        line = " ".join(map(repr, command)) + shell_tail + "; exit ${PIPESTATUS[0]}"
        return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300, env=env)
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300, env=env)


@pytest.mark.slow  # a whole process each, as the shell runs it
@pytest.mark.parametrize("where, reason", [(" | head -c1", "Broken pipe"), (" > /dev/full", "No space left on device")])
def test_an_output_that_takes_no_more_is_one_line(where, reason):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    result = run_generate("--max-new-tokens", "40", "Once upon a time", shell_tail=where)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr == f"error: stdout: {reason}; the response was cut there\n"


@pytest.mark.slow  # a whole process, as the shell runs it
def test_a_closed_stdout_is_one_line():
    result = run_generate("--max-new-tokens", "4", "Once upon a time", shell_tail=" >&-")
    assert result.returncode == 1 and result.stderr == "error: stdout is closed: there is nowhere to print the response\n"


@pytest.mark.slow  # a whole process, as the shell runs it
def test_merge_into_a_full_stdout_says_the_folder_was_written(adapter, stories_dir, tmp_path):
    command = [sys.executable, str(ROOT / "merge.py"), "--adapter", str(adapter), "--model", str(stories_dir),
               "--out", str(tmp_path / "merged")]
    result = subprocess.run(["bash", "-c", " ".join(map(repr, command)) + " > /dev/full"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and result.stderr == (f"error: stdout: No space left on device; the merged model "
                                                        f"{tmp_path / 'merged'} was written all the same\n")
    assert (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.slow  # a whole process, as the shell runs it
def test_a_utf8_prompt_is_read_as_utf8_in_the_c_locale():
    """LC_ALL=C (and no UTF-8 mode) decodes the command line as ASCII; the prompt is its bytes read as UTF-8, and the
    response is written as UTF-8: the same bytes as under C.UTF-8."""
    runs = [run_generate("--max-new-tokens", "12", "Tom said: café, naïve 日本", env={
        **os.environ, "LC_ALL": locale, "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}) for locale in ("C", "C.UTF-8")]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()
