"""The compile cache on disk, so compiled constraints survive a restart or a
scale-to-zero: one file per cache key holding what the in-memory cache holds
(the validated grammar text, check grammars, summaries, masks, or the error).

Entries are versioned by a namespace (this file format, llguidance's version,
the tokenizer's id and a fingerprint of its vocabulary, the compiler's own
source): another version never reads them, and they age out. Each file is
written to a temporary name and renamed into place (readers never see half a
file), starts with a sha256 of its body and repeats its full key; a file that
is truncated, corrupt, foreign or of another version is deleted and treated
as a miss. The body is JSON (no pickle: a foreign file can never run code).
The folder is bounded in bytes: when a write overflows it, the files used
least recently (oldest modification time; a load touches its file) go first.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import symbol_database
from google.protobuf.message import Message
from llguidance import LLTokenizer

from ..errors import FieldViolation, ServiceError
from .core import LLGUIDANCE_VERSION, CompiledConstraints

log = logging.getLogger("ananke.compile_cache")

FORMAT = 1
MAGIC = b"ananke-compiled/1\n"
SUFFIX = ".entry"
# Temporary files older than this are leftovers of a crashed writer.
STALE_TMP_S = 3600.0

Result = CompiledConstraints | ServiceError


class UnencodableError(TypeError):
    """The entry holds a value the disk format cannot represent (it stays in memory only)."""


@dataclass(frozen=True)
class DiskStats:
    """Counters of the disk cache since it was opened."""

    folder: str
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    writes: int
    discarded: int  # corrupt, foreign or unreadable files deleted


# -- the namespace ------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: LLTokenizer) -> str:
    """sha256 over every token's bytes and the EOS id: two tokenizers with the
    same id but a different vocabulary never share entries."""
    hasher = hashlib.sha256(f"{tokenizer.vocab_size}:{tokenizer.eos_token}".encode())
    for token in range(tokenizer.vocab_size):
        raw = tokenizer.decode_bytes([token])
        hasher.update(len(raw).to_bytes(4, "big") + raw)
    return hasher.hexdigest()


def _source_fingerprint() -> str:
    """sha256 of the constraints package's source: a new compiler never reads
    entries an older one wrote."""
    hasher = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        hasher.update(path.name.encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()


def namespace(
    tokenizer: LLTokenizer,
    *,
    tokenizer_id: str,
    vocab_size: int,
    eos_ids: Sequence[int],
    max_constraint_bytes: int,
) -> str:
    """The version every entry is stamped with: format, llguidance, tokenizer,
    the compiler's source and the limits that change its results."""
    parts = (
        f"format={FORMAT}",
        f"llguidance={LLGUIDANCE_VERSION}",
        f"tokenizer={tokenizer_id}",
        f"vocab={vocab_size}",
        f"eos={','.join(map(str, eos_ids))}",
        f"tokens={tokenizer_fingerprint(tokenizer)}",
        f"compiler={_source_fingerprint()}",
        f"max_constraint_bytes={max_constraint_bytes}",
    )
    return ";".join(parts)


# -- the codec ----------------------------------------------------------------

# Dataclasses an entry may hold, by name. Anything else is UnencodableError.
_DATACLASSES: dict[str, type[Any]] = {}


def register(cls: type[Any]) -> type[Any]:
    """Allows a dataclass inside cache entries (its fields must be encodable)."""
    _DATACLASSES[cls.__name__] = cls
    return cls


for _cls in (CompiledConstraints, ServiceError, FieldViolation):
    register(_cls)
# Set on load, never stored.
_TRANSIENT_FIELDS = frozenset({"from_disk"})


def encode(value: Any) -> Any:
    """A JSON value for `value`; raises UnencodableError."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {"frozenset": sorted(encode(v) for v in value)}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, grpc.StatusCode):
        return {"status_code": value.name}
    if isinstance(value, Message):
        name = value.DESCRIPTOR.full_name
        blob = base64.b64encode(value.SerializeToString(deterministic=True)).decode()
        return {"proto": name, "bytes": blob}
    cls = type(value)
    if dataclasses.is_dataclass(value) and _DATACLASSES.get(cls.__name__) is cls:
        fields = {
            f.name: encode(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _TRANSIENT_FIELDS
        }
        return {"dataclass": cls.__name__, "fields": fields}
    raise UnencodableError(f"cannot store a {cls.__qualname__} on disk")


def decode(value: Any) -> Any:
    """The value `encode` was given; raises ValueError/TypeError/KeyError on bad input."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise ValueError(f"unexpected {type(value).__name__} in entry")
    if "tuple" in value:
        return tuple(decode(v) for v in value["tuple"])
    if "list" in value:
        return [decode(v) for v in value["list"]]
    if "frozenset" in value:
        return frozenset(decode(v) for v in value["frozenset"])
    if "dict" in value:
        return {decode(k): decode(v) for k, v in value["dict"]}
    if "status_code" in value:
        return grpc.StatusCode[value["status_code"]]
    if "proto" in value:
        name = str(value["proto"])
        if not name.startswith("ananke.v1."):
            raise ValueError(f"foreign message type {name}")
        cls = symbol_database.Default().GetSymbol(name)
        return cls.FromString(base64.b64decode(value["bytes"], validate=True))
    if "dataclass" in value:
        cls = _DATACLASSES[str(value["dataclass"])]
        fields = value["fields"]
        if not isinstance(fields, dict):
            raise ValueError("dataclass fields are not an object")
        return cls(**{str(k): decode(v) for k, v in fields.items()})
    raise ValueError(f"unknown tag in entry: {sorted(value)}")


# -- the folder -----------------------------------------------------------------


class DiskCache:
    """A bounded folder of compile results for one namespace; thread-safe, and
    safe to share between processes (atomic renames, checksums)."""

    def __init__(self, folder: Path, *, max_bytes: int, version: str) -> None:
        self.folder = folder
        self._max_bytes = max_bytes
        self._version = version
        self._lock = threading.Lock()
        self._hits = self._misses = self._writes = self._discarded = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._entries, self._bytes = self._scan(clean=True)

    def stats(self) -> DiskStats:
        """A snapshot of the counters (entries and bytes as this process knows them)."""
        with self._lock:
            return DiskStats(
                str(self.folder),
                self._entries,
                self._bytes,
                self._max_bytes,
                self._hits,
                self._misses,
                self._writes,
                self._discarded,
            )

    def path_for(self, key: str) -> Path:
        """The file of a cache key in this namespace."""
        name = hashlib.sha256(f"{self._version}\n{key}".encode()).hexdigest()
        return self.folder / (name + SUFFIX)

    def load(self, key: str) -> Result | None:
        """The stored result for `key`, or None (a bad file is deleted)."""
        path = self.path_for(key)
        try:
            size = path.stat().st_size
            if size > self._max_bytes:
                raise ValueError(f"{size} bytes, more than the cache may hold")
            raw = path.read_bytes()
        except FileNotFoundError:
            self._count(misses=1)
            return None
        except (OSError, ValueError) as error:
            self._discard(path, error)
            return None
        try:
            result = self._parse(raw, key)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
            self._discard(path, error)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        self._count(hits=1)
        if isinstance(result, CompiledConstraints):
            return dataclasses.replace(result, from_disk=True)
        return result

    def store(self, key: str, result: Result) -> None:
        """Writes `result` (atomically); never raises: the disk is only a cache."""
        try:
            body = json.dumps(
                {"version": self._version, "key": key, "entry": encode(result)},
                separators=(",", ":"),
            ).encode()
        except (UnencodableError, TypeError, ValueError) as why:
            log.debug("compile result kept in memory only: %s", why)
            return
        raw = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        if len(raw) > self._max_bytes:
            return
        path = self.path_for(key)
        try:
            previous = path.stat().st_size if path.exists() else 0
            with tempfile.NamedTemporaryFile(
                dir=self.folder, prefix=".tmp-", suffix=SUFFIX, delete=False
            ) as handle:
                handle.write(raw)
            os.replace(handle.name, path)
        except OSError as error:
            log.warning("could not write the compile cache file %s: %s", path, error)
            return
        with self._lock:
            self._writes += 1
            self._entries += 0 if previous else 1
            self._bytes += len(raw) - previous
            overflow = self._bytes > self._max_bytes
        if overflow:
            self.evict()

    def evict(self) -> None:
        """Deletes the least recently used files until the folder fits max_bytes."""
        files = sorted(self._files(), key=lambda item: item[1])
        total = sum(size for _, _, size in files)
        for path, _, size in files:
            if total <= self._max_bytes:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # another process evicted it
            except OSError:
                continue
            total -= size
        entries, total = self._scan(clean=False)
        with self._lock:
            self._entries, self._bytes = entries, total

    # -- helpers --------------------------------------------------------------

    def _parse(self, raw: bytes, key: str) -> Result:
        if not raw.startswith(MAGIC):
            raise ValueError("not a compile cache file")
        checksum, _, body = raw[len(MAGIC) :].partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != checksum:
            raise ValueError("checksum mismatch")
        document = json.loads(body)
        if document["version"] != self._version or document["key"] != key:
            raise ValueError("entry of another version or key")
        result = decode(document["entry"])
        if not isinstance(result, CompiledConstraints | ServiceError):
            raise TypeError(f"entry is a {type(result).__name__}")
        return result

    def _discard(self, path: Path, why: BaseException) -> None:
        log.warning("deleting bad compile cache file %s: %s", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()
        self._count(discarded=1, misses=1)

    def _count(self, *, hits: int = 0, misses: int = 0, discarded: int = 0) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses
            self._discarded += discarded

    def _files(self) -> Iterable[tuple[Path, float, int]]:
        """(path, modification time, size) of every entry file."""
        for path in self.folder.glob("*" + SUFFIX):
            if path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except OSError:
                continue
            yield path, info.st_mtime, info.st_size

    def _scan(self, *, clean: bool) -> tuple[int, int]:
        """Entry count and bytes on disk; `clean` also deletes stale temporary files."""
        if clean:
            now = time.time()
            for tmp in self.folder.glob(".tmp-*"):
                _unlink_if(tmp, lambda info: now - info.st_mtime > STALE_TMP_S)
        files = list(self._files())
        return len(files), sum(size for _, _, size in files)


def _unlink_if(path: Path, condition: Callable[[os.stat_result], bool]) -> None:
    with contextlib.suppress(OSError):
        if condition(path.stat()):
            path.unlink()
