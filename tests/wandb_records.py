"""Reading the record types of an offline W&B run file (``run-<id>.wandb``), to tell a finished run.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a
checksum (4 bytes), a length (2) and a type (1: full, 2: first, 3: middle, 4: last), holding
serialised ``Record`` protobufs. A run that was finished ends with an ``exit`` record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    position, pending = FILE_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            position += left
            continue
        chunk = data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def record_types(path: Path) -> list[str]:
    """The type of every record in the file, in order (``run``, ``history``, ..., ``exit``)."""
    types = []
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        types.append(str(record.WhichOneof("record_type")))
    return types
