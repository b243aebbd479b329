"""Read an offline W&B run file (``run-ID.wandb``) back, for tests.

wandb 0.31 no longer ships a reader for its own run files. The format is LevelDB's log
format behind a 7-byte header (``:W&B``, magic 0xBEE1, version 0): 32 KiB blocks of
records, each with a 7-byte header (CRC32C, little-endian length, type: 1 full, 2 first,
3 middle, 4 last piece), a block's tail shorter than a header being padding. Each
reassembled record is a ``wandb_internal_pb2.Record`` protobuf, parsed with wandb's own
generated classes. Checksums are not verified (the tests read files just written).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    pos, pieces, out = FILE_HEADER.size, b"", []
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:  # padding at the end of a block
            pos += left_in_block
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 0 and length == 0:  # zero-filled tail of the file
            break
        pieces = chunk if kind in (FULL, FIRST) else pieces + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            out.append(record)
    return out


def history(path: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` call as a dict (``_step`` included), in order."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def config(path: str | Path) -> dict[str, Any]:
    """The run's config as logged (the last value of each key)."""
    out: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = (
            record.config.update
            if kind == "config"
            else record.run.config.update
            if kind == "run"
            else []
        )
        for item in updates:
            out[item.key] = json.loads(item.value_json)
    return out
