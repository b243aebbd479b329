"""Where a benchmark's rows come from: a local file, a local directory (a hub snapshot
copied by hand), or a ``datasets`` name when the hub is reachable.

Every source also says which version of the data it read (``describe``): the SHA-256 of
the files, or the dataset's name, revision and fingerprint, so that two evaluations can be
told apart when their numbers differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cgrpo.builtins.tasks.files import CSVTask, FileOptions, JSONLTask, ParquetTask
from cgrpo.errors import DataError

HUB_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connection well within this
_hub_checked: dict[str, str | None] = {}  # endpoint -> why it is unreachable (None: it is)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# JSON files a hub snapshot or a save_to_disk directory holds beside the data
METADATA_FILES = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, row)`` of one data file, by its suffix (a ``.json`` file holding one
    array is read as that array; otherwise as JSON lines)."""
    suffix = path.suffix.lower()
    options = FileOptions(path=str(path))
    if suffix == ".json" and path.read_bytes().lstrip()[:1] == b"[":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a JSON array of rows: {exc}") from None
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
        return
    reader = {".jsonl": JSONLTask, ".json": JSONLTask, ".csv": CSVTask, ".parquet": ParquetTask}
    if suffix not in reader:
        raise DataError(f"{path}: unknown data file type; use one of {', '.join(DATA_SUFFIXES)}")
    for line, row in reader[suffix](options).rows():
        yield f"{path}:{line}", row


def data_files(path: Path, subset: str | None, split: str) -> list[Path]:
    """The data files of ``path``: the file itself, or the files under a directory whose
    relative path names the subset (when set) and the split. A directory with a single data
    file uses it whatever its name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    found = sorted(
        p for p in path.rglob("*")
        if p.suffix.lower() in DATA_SUFFIXES and p.is_file() and ".cache" not in p.parts
        and p.name not in METADATA_FILES
    )  # fmt: skip
    if len(found) == 1:
        return found

    def names(p: Path, word: str) -> bool:
        return word.lower() in str(p.relative_to(path)).lower()

    of_subset = [p for p in found if subset is None or names(p, subset)]
    # the split's files; a subset held in one file whatever the split (GPQA's csv) is used
    chosen = [p for p in of_subset if names(p, split)] or (of_subset if subset else [])
    if not chosen:
        listed = ", ".join(str(p.relative_to(path)) for p in found[:8]) or "none"
        want = f"subset {subset!r} and split {split!r}" if subset else f"split {split!r}"
        raise DataError(
            f"{path}: no data file whose path names {want} (data files: {listed}); set "
            "path to the file itself"
        )
    return chosen


class Source:
    """Rows from ``path`` (file or directory) or, without one, the ``datasets`` hub."""

    def __init__(
        self,
        path: str | None,
        dataset: str | None,
        subset: str | None,
        split: str,
        revision: str | None,
        benchmark: str,
    ):
        self.path = Path(path).expanduser() if path else None
        self.dataset, self.subset, self.split, self.revision = dataset, subset, split, revision
        self.benchmark = benchmark
        self._described: dict[str, Any] = {}

    def rows(self) -> Iterator[tuple[str, Any]]:
        if self.path is not None and _saved_to_disk(self.path):
            yield from self._disk_rows()
            return
        if self.path is not None:
            try:
                files = data_files(self.path, self.subset, self.split)
            except DataError as exc:
                raise DataError(f"benchmark {self.benchmark}: {exc}") from None
            self._described = {
                "path": str(self.path),
                "files": [str(f) for f in files],
                "sha256": sha256_of(files),
            }
            for f in files:
                yield from file_rows(f)
            return
        yield from self._hub_rows()

    def _disk_rows(self) -> Iterator[tuple[str, Any]]:
        """A directory written by ``datasets``' ``save_to_disk`` (a split's or a
        DatasetDict's, whose split is chosen)."""
        import datasets

        assert self.path is not None
        ds = datasets.load_from_disk(str(self.path))
        if isinstance(ds, datasets.DatasetDict):
            if self.split not in ds:
                raise DataError(
                    f"benchmark {self.benchmark}: {self.path} has splits {sorted(ds)}, not "
                    f"{self.split!r}; set its split"
                )
            ds = ds[self.split]
        self._described = {"path": str(self.path), "fingerprint": getattr(ds, "_fingerprint", None)}
        for i, row in enumerate(ds):
            yield f"{self.path}[{i}]", row

    def _hub_rows(self) -> Iterator[tuple[str, Any]]:
        if not self.dataset:
            raise DataError(
                f"benchmark {self.benchmark}: no data: set its path (a local file or directory)"
            )
        hint = (
            f"benchmark {self.benchmark}: {self.dataset} ({self.subset or 'default'} subset, "
            f"split {self.split}) could not be loaded from the hub"
        )
        fix = (f"; download it where the hub is reachable and set the benchmark's path=... "
               f"(cgrpo eval: --benchmarks {self.benchmark}=PATH)")  # fmt: skip
        try:
            import datasets
        except ImportError:
            raise DataError(f"{hint}: `datasets` is not installed{fix}") from None
        offline = go_offline_if_unreachable()
        try:
            ds = datasets.load_dataset(
                self.dataset, self.subset, split=self.split, revision=self.revision
            )
        except Exception as exc:  # offline, gated, renamed: all end the same way
            if offline is not None:
                raise DataError(
                    f"{hint}: it is not in the local cache and {offline}{fix}"
                ) from None
            raise DataError(f"{hint}: {type(exc).__name__}: {str(exc)[:300]}{fix}") from None
        self._described = {
            "dataset": self.dataset,
            "subset": self.subset,
            "split": self.split,
            "revision": self.revision or "main",
            "fingerprint": getattr(ds, "_fingerprint", None),
        }
        for i, row in enumerate(ds):
            yield f"{self.dataset}[{self.split}][{i}]", row

    def describe(self) -> dict[str, Any]:
        """Where the rows came from and which version (valid after :meth:`rows`)."""
        return dict(self._described)


def hub_unreachable(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds;
    else why not. A DNS lookup ignores socket timeouts, so the attempt runs in a daemon
    thread that is waited on for ``timeout`` at most."""
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"


def go_offline_if_unreachable() -> str | None:
    """Before the first hub dataset of a process: when the hub cannot be reached, switch
    ``huggingface_hub`` and ``datasets`` to offline mode, so that a copy in the local cache
    still loads and anything else fails at once, instead of half a minute of retries.
    Returns why nothing will be downloaded, as a clause (None: the hub is reachable, or may
    be: behind a proxy a direct connection says nothing)."""
    import datasets
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set (offline mode)"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    if hub.ENDPOINT not in _hub_checked:
        _hub_checked[hub.ENDPOINT] = hub_unreachable(hub.ENDPOINT)
    why = _hub_checked[hub.ENDPOINT]
    if why is None:
        return None
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    return f"the hub is unreachable ({why})"


def _saved_to_disk(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json"))
