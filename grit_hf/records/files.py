"""The one reader of record files: JSONL (`.jsonl`, `.jsonl.gz`), JSON lists (`.json`), folders of them, and, for
training, `datasets` objects, saved `datasets` folders and dataset names. Every record comes with where it came from
(`file:line`, `file[index]` or `dataset[index]`), so a bad record is named in the error.

Used by retrieval folders (`grit_hf.records.retrieval`), RAG examples (`grit_hf.records.rag_examples`), the training
data (`grit_hf.trainer.data`, `grit_hf.trainer.cache_data`), `grit-hf embed` and the demo.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["DATA_SUFFIXES", "Record", "is_data_file", "is_saved_dataset", "iter_records", "read_records"]

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


class Record(NamedTuple):
    """A record, where it came from (`file:line`, `file[index]`), and the name of its source (the file's stem, or
    the dataset's name)."""

    where: str
    data: Any
    source: str


def is_data_file(path: Path) -> bool:
    """Whether `path` names a file of records (`DATA_SUFFIXES`)."""
    return path.name.endswith(DATA_SUFFIXES)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _file_records(path: Path) -> Iterator[Record]:
    source = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg}).") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json data file must hold a list of records, got {type(data).__name__}.")
        for index, record in enumerate(data):
            yield Record(f"{path}[{index}]", record, source)
        return
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: invalid JSON ({error.msg}).") from None
            yield Record(f"{path}:{number}", record, source)


def read_records(path: str | os.PathLike, kind: str = "data") -> Iterator[Record]:
    """The records of a `.jsonl`/`.jsonl.gz`/`.json` file, or of every such file in a folder (sorted by name).

    Raises `FileNotFoundError` for a missing path, and `ValueError` for another kind of file, a folder without data
    files, or a line that is not JSON (naming `file:line`); `kind` names the data in these messages.
    """
    path = Path(path)
    if path.is_file():
        if not is_data_file(path):
            raise ValueError(f"Unsupported {kind} file {str(path)!r}: expected .jsonl, .jsonl.gz or .json.")
        yield from _file_records(path)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_data_file(p))
        if not files:
            raise ValueError(f"The {kind} folder {str(path)!r} has no .jsonl/.jsonl.gz/.json files.")
        for file in files:
            yield from _file_records(file)
    else:
        raise FileNotFoundError(f"The {kind} file {str(path)!r} does not exist.")


def iter_records(source: Any, split: str = "train", kind: str = "data") -> Iterator[Record]:
    """The records of a file or folder (`read_records`), a saved `datasets` folder, a `datasets.Dataset` /
    `DatasetDict` (its `split`), or a dataset name for `datasets.load_dataset`. `datasets` is imported only for
    the last three."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.exists() and not is_saved_dataset(path):
            yield from read_records(path, kind)
            return
        if not path.exists() and (str(source).endswith(DATA_SUFFIXES) or str(source).startswith((".", os.sep))):
            raise FileNotFoundError(f"The {kind} dataset {str(source)!r} does not exist.")
    import datasets

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        source = (
            datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(str(source), split=split)
        )
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"The {kind} dataset has no split {split!r}; it has {list(source)}.")
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise TypeError(
            f"The {kind} dataset must be a path, a dataset name or a `datasets.Dataset`, got {type(source).__name__}."
        )
    name = source.info.dataset_name or "dataset"
    for index, record in enumerate(source):
        yield Record(f"{name}[{index}]", record, name)
