"""Read back an offline W&B run file (``offline-run-*/run-*.wandb``) as protobuf records.

The file is a sequence of 32 KiB blocks in LevelDB-log framing after a 7-byte header (``:W&B``, magic
0xBEE1, version): each chunk has a CRC-32 over its type byte and data, a 16-bit length and a type (full,
first, middle, last). Chunks are joined into records and parsed as ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: str | Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    out: list[bytes] = []
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if crc == 0 and length == 0 and kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, f"bad checksum at byte {pos} of {path}"
        pos += CHUNK_HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    out = []
    for raw in raw_records(path):
        r = wandb_internal_pb2.Record()
        r.ParseFromString(raw)
        out.append(r)
    return out


def _key(item: Any) -> str:
    return item.key if item.key else "/".join(item.nested_key)


class OfflineRun:
    """What an offline run file holds: run info, config, summary, history items, files and artifacts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records = records(path)
        self.run = None
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.artifacts: list[Any] = []
        self.kinds: list[str] = []
        for r in self.records:
            kind = r.WhichOneof("record_type")
            self.kinds.append(kind)
            if kind == "run":
                self.run = r.run
                for item in r.run.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
            elif kind == "summary":
                for item in r.summary.update:
                    self.summary[_key(item)] = json.loads(item.value_json)
            elif kind == "history":
                self.history.append({_key(item): json.loads(item.value_json) for item in r.history.item})
            elif kind == "files":
                self.files.extend(f.path for f in r.files.files)
            elif kind == "artifact":
                self.artifacts.append(r.artifact)

    @property
    def files_dir(self) -> Path:
        return self.path.parent / "files"

    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def offline_runs(wandb_dir: str | Path, timeout: float = 20.0) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (the ``WANDB_DIR``; runs live in its ``wandb/`` folder).

    W&B's service process writes the file in the background and may still be flushing it after
    ``finish()`` returns, so each file is re-read until it holds the run's final ``exit`` record.
    """
    import time

    paths = sorted(Path(wandb_dir).glob("**/offline-run-*/run-*.wandb"))
    out = []
    for p in paths:
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = OfflineRun(p)
                if "exit" in run.kinds:
                    break
            except AssertionError:  # a chunk still being written
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{p} was not completed by W&B within {timeout} s")
            time.sleep(0.2)
        out.append(run)
    return out
