"""Model directories on disk: atomic writes, config.json, safetensors weights, no pickles."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator

from .errors import ArtifactError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    ArtifactError (one line) when the folder does not exist, cannot be written, or the device is full;
    nothing is left behind then.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ArtifactError(f"cannot write {path}: the folder {directory} does not exist; create it, or write "
                            "somewhere else")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as error:  # a read-only or foreign folder
        raise ArtifactError(f"cannot write {path}: {error.strerror or error}; write somewhere else") from None
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArtifactError(f"cannot write {path}: the device is full ({error.strerror}); free some space, or "
                                "write somewhere else; nothing was written") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str, data) -> None:
    with atomic_write(path) as out:
        json.dump(data, out, indent=2, sort_keys=False)
        out.write("\n")


def check_out(out: str, force: bool, inputs: tuple = ()) -> str:
    """`out` as an absolute path, after checking that it may be written (one-line errors if not).

    inputs: the paths the command reads. `out` may be none of them, nor a folder that holds one: --force
    replaces `out` whole, and would delete what the command was made from.
    """
    out = os.path.abspath(out)
    if os.path.isfile(out):
        raise ArtifactError(f"{out} is a file; give a directory path for --out")
    ancestor = os.path.dirname(out)
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ArtifactError(f"{ancestor} is a file, so --out {out} cannot be made under it; choose another --out")
    real = os.path.realpath(out)
    for path in inputs:
        source = os.path.realpath(os.fspath(path))
        if source == real or source.startswith(real.rstrip(os.sep) + os.sep):
            what = "is what" if source == real else f"holds {path}, which"
            raise ArtifactError(f"--out {out} {what} this command reads; choose another --out (replacing it "
                                "would delete what the output is made from)")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise ArtifactError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    return out


def _make_stage(out: str) -> str:
    """A new empty folder beside `out` (its parent made first), named after it; one-line errors."""
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".partial", dir=parent)
    except OSError as error:  # a read-only or foreign folder (/proc), no permission
        raise ArtifactError(f"cannot write {out}: {error.strerror or error}; choose another --out") from None
    os.chmod(path, 0o777 & ~_umask())
    return path


class StagedRun:
    """An output directory written under a temporary name beside `out`, which becomes `out` on commit().

    Until commit() nothing is at `out` but what was there before (a --force run replaces it only then);
    `path` is where to write, the stage before the commit and `out` after it. A long-running command
    (finetune) commits at its first checkpoint: from then on `out` holds a run that --resume continues.
    """

    def __init__(self, out: str, force: bool = False, inputs: tuple = ()):
        self.out = check_out(out, force, inputs)
        self.force, self.inputs = force, inputs
        self.path = _make_stage(self.out)
        self.committed = False

    def commit(self) -> str:
        """Move the stage to `out` (replacing what --force allows) and return `out`; later calls do nothing."""
        if self.committed:
            return self.out
        out, parent = self.out, os.path.dirname(self.out)
        check_out(out, self.force, self.inputs)  # something may have appeared there while the command ran
        if os.path.isdir(out):
            retired = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=parent)
            os.replace(out, os.path.join(retired, "old"))
            os.replace(self.path, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(self.path, out)
        self.path, self.committed = out, True
        return out

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_run(out: str, force: bool = False, resumable: Callable[[str], bool] | None = None,
               inputs: tuple = ()) -> Iterator[StagedRun]:
    """A StagedRun that is committed when the block succeeds and discarded when it fails before a commit.

    A failure after a commit (a long run interrupted after its first checkpoint) leaves `out` as the
    last checkpoint made it; so does a failure before the commit when `resumable(stage)` says the stage
    already holds a checkpoint to go on from. inputs: the paths the command reads, which `out` may not be or hold.
    """
    run = StagedRun(out, force, inputs)
    try:
        yield run
    except BaseException:
        if not run.committed and resumable is not None and resumable(run.path):
            with contextlib.suppress(ArtifactError):  # --out was taken meanwhile: the stage is dropped below
                run.commit()
        run.discard()
        raise
    run.commit()


@contextlib.contextmanager
def staged_directory(out: str, force: bool = False, inputs: tuple = ()) -> Iterator[str]:
    """A temporary directory that becomes `out` only if the block succeeds.

    `out` must not exist or be empty, unless `force` is set, in which case its old contents are
    replaced at the end: a failure at any point leaves `out` as it was. inputs: the paths the command
    reads; `out` may not be one of them or a folder that holds one (one-line ArtifactError).
    """
    with staged_run(out, force, inputs=inputs) as run:
        yield run.path


@contextlib.contextmanager
def claimed_directory(out: str, force: bool = False) -> Iterator[str]:
    """`out` written in place (for files that record their own absolute paths), undone on failure.

    A failure removes what the block wrote and puts back the directory --force was replacing; on
    success that old directory is deleted.
    """
    out = check_out(out, force)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise ArtifactError(f"cannot write {out}: {error.strerror or error}; choose another --out") from None
    retired = None
    if os.path.isdir(out):
        retired = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=parent)
        os.replace(out, os.path.join(retired, "old"))
    try:
        os.makedirs(out)
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if retired is not None:
            os.replace(os.path.join(retired, "old"), out)
            shutil.rmtree(retired, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


# -- weights ---------------------------------------------------------------------------------------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER = 100 * 2**20


def refuse_pickle(path: str) -> None:
    """Refuse a file that is a pickle, whatever its name: unpickling runs arbitrary code."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    if start[8:9] == b"{":  # a safetensors file: 8 bytes of header length, then the JSON header
        return
    is_zip = start[:4] == b"PK\x03\x04"  # torch.save's default format is a zip holding a pickle
    is_pickle = len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5
    if is_zip or is_pickle or path.endswith(PICKLE_SUFFIXES):
        raise ArtifactError(
            f"refusing {path}: it is a pickle ({'torch.save zip archive' if is_zip else 'Python pickle'}), "
            "and loading a pickle can run arbitrary code; convert it to safetensors where you trust it "
            "(safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors'))"
        )


def read_safetensors_header(path: str) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape"}, after checking that the file is whole and not a pickle.

    Reads only the header, so it needs neither torch nor the memory for the weights.
    """
    if not os.path.isfile(path):
        raise ArtifactError(f"{path} does not exist")
    refuse_pickle(path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        raw_length = handle.read(8)
        if len(raw_length) < 8:
            raise ArtifactError(f"{path} is truncated or not a safetensors file ({size} bytes); rewrite it")
        (length,) = struct.unpack("<Q", raw_length)
        if length > min(MAX_HEADER, size - 8):
            raise ArtifactError(f"{path} is truncated or not a safetensors file (header of {length} bytes "
                                f"in a file of {size}); rewrite it")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{path} is corrupt: its safetensors header is not JSON; rewrite it") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is corrupt: its safetensors header is not a table; rewrite it")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    tensors, end_of_data = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
            expected = count * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path} is corrupt: bad header entry for tensor '{name}'; rewrite it") from None
        if end - begin != expected or begin < 0:
            raise ArtifactError(f"{path} is corrupt: tensor '{name}' has {end - begin} bytes, "
                                f"its shape needs {expected}; rewrite it")
        end_of_data = max(end_of_data, end)
        tensors[name] = {"dtype": dtype, "shape": list(shape)}
    if end_of_data != data_size:
        raise ArtifactError(f"{path} is truncated: its header describes {end_of_data} bytes of tensors "
                            f"but the file holds {data_size}; restore it from a good copy or recompose")
    return tensors


def find_weights(directory: str) -> str:
    """The model.safetensors of a model directory, refusing pickled checkpoints with the reason."""
    path = os.path.join(directory, WEIGHTS)
    if os.path.isfile(path):
        return path
    pickles = sorted(n for n in os.listdir(directory) if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        refuse_pickle(os.path.join(directory, pickles[0]))
    raise ArtifactError(f"{directory} has no {WEIGHTS}; compose or train a model there first")


def parameter_counts(tensors: dict[str, dict]) -> dict[str, int]:
    """Number of parameters per part of the composition (the first component of each name)."""
    counts: dict[str, int] = {}
    for name, entry in tensors.items():
        part = name.split(".")[0]
        if part == "objectives":
            part = ".".join(name.split(".")[:2])
        count = 1
        for dim in entry["shape"]:
            count *= dim
        counts[part] = counts.get(part, 0) + count
    return counts


# -- config ----------------------------------------------------------------------------------------


def read_json(path: str, remedy: str):
    """The contents of a JSON file, or a one-line error that it is not valid JSON and what to do."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); {remedy}") from None


def read_config(directory: str) -> dict:
    """config.json of a model directory, with one-line errors for what can be wrong."""
    if not os.path.isdir(directory):
        raise ArtifactError(f"{directory} is not a directory; give a model directory made by lmkit compose")
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, "lmkit-onnx.json")):  # an export's manifest (lmkit.exports.manifest)
            raise ArtifactError(f"{directory} is an export directory, not a model directory: this command needs the "
                                "model it was exported from (lmkit inspect describes an export; generate, translate, "
                                "embed, predict, bench and serve run it, and eval an encoder-decoder's)")
        raise ArtifactError(f"{directory} has no {CONFIG}: it is not an lmkit model directory "
                            "(make one with lmkit compose, or lmkit import-hf for a Hugging Face checkpoint)")
    config = read_json(path, "restore it or recompose the model")
    if not isinstance(config, dict) or not isinstance(config.get("spec"), dict):
        raise ArtifactError(f"{path} has no 'spec' table: it was not written by lmkit")
    return config


def trained_length(model_dir: str) -> int | None:
    """The --seq-len of the training run that last wrote `model_dir`'s checkpoint, or None (no run, or unreadable)."""
    try:
        with open(os.path.join(model_dir, "trainer_state.json"), encoding="utf-8") as handle:
            seq_len = json.load(handle)["arguments"]["seq_len"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seq_len if isinstance(seq_len, int) and seq_len >= 2 else None
