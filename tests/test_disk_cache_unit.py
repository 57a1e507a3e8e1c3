"""The compile cache on disk: entries survive a new compiler (a new process's
view), are versioned, bounded, and bad files are deleted and recompiled."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import provenance_pb2
from ananke_server.constraints import CompiledConstraints, ConstraintCompiler
from ananke_server.constraints.disk_cache import (
    MAGIC,
    SUFFIX,
    DiskCache,
    UnencodableError,
    decode,
    encode,
    namespace,
    tokenizer_fingerprint,
)
from ananke_server.errors import FieldViolation, ServiceError
from llguidance import LLTokenizer

TOKENIZER = LLTokenizer("byte")
P = "request.constraints"


def make_compiler(folder: Path, **overrides: object) -> ConstraintCompiler:
    options: dict[str, object] = {
        "vocab_size": TOKENIZER.vocab_size,
        "tokenizer_id": "byte",
        "max_constraint_bytes": 1 << 16,
        "cache_size": 16,
        "timeout_s": 10.0,
        "workers": 1,
        "disk_cache_dir": folder,
        "disk_cache_bytes": 1 << 20,
    }
    options.update(overrides)
    return ConstraintCompiler(TOKENIZER, **options)  # type: ignore[arg-type]


def schema(text: str) -> c.ConstraintIR:
    return c.ConstraintIR(name="s", json_schema=c.JsonSchemaConstraint(schema=text))


def regex(pattern: str) -> c.ConstraintIR:
    return c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern))


SCHEMA = schema('{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}')


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


async def compile_once(
    folder: Path, items: list[c.ConstraintIR], **overrides: object
) -> tuple[CompiledConstraints, bool, ConstraintCompiler]:
    compiler = make_compiler(folder, **overrides)
    try:
        compiled, hit = await compiler.compile(items, P)
    finally:
        compiler.close()
    return compiled, hit, compiler


async def test_a_new_compiler_loads_what_an_earlier_one_compiled(tmp_path: Path) -> None:
    first, hit, compiler = await compile_once(tmp_path, [SCHEMA])
    assert (hit, first.from_disk) == (False, False)
    disk = compiler.disk_stats()
    assert disk is not None
    assert (disk.hits, disk.misses, disk.writes, disk.entries) == (0, 1, 1, 1)
    assert len(entries(tmp_path)) == 1

    second, hit, compiler = await compile_once(tmp_path, [SCHEMA])
    assert (hit, second.from_disk) == (False, True)  # a memory miss answered from disk
    assert second == first  # grammar, checks, summaries, masks: everything
    assert second.summaries[0].kind == c.CONSTRAINT_KIND_JSON_SCHEMA
    disk = compiler.disk_stats()
    assert disk is not None
    assert (disk.hits, disk.misses, disk.writes) == (1, 0, 0)
    assert compiler.stats().misses == 1


async def test_token_masks_and_intersections_round_trip(tmp_path: Path) -> None:
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=[5, 3, 9]))
    items = [regex(r"\{.*\}"), SCHEMA, mask]
    first, _, _ = await compile_once(tmp_path, items)
    assert first.intersection
    assert first.forbidden_token_ids == frozenset({3, 5, 9})
    second, _, _ = await compile_once(tmp_path, items)
    assert second.from_disk
    assert second == first


async def test_errors_are_stored_too(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as first:
        await compile_once(tmp_path, [regex("(")])
    with pytest.raises(ServiceError) as second:
        await compile_once(tmp_path, [regex("(")])
    assert second.value == first.value
    assert second.value.reason == "REGEX_INVALID"
    assert second.value.metadata["field"] == f"{P}[0].regex.pattern"


async def test_another_tokenizer_or_limit_does_not_read_the_entry(tmp_path: Path) -> None:
    await compile_once(tmp_path, [SCHEMA])
    other_id, _, _ = await compile_once(tmp_path, [SCHEMA], tokenizer_id="other")
    assert not other_id.from_disk
    other_limit, _, _ = await compile_once(tmp_path, [SCHEMA], max_constraint_bytes=1 << 15)
    assert not other_limit.from_disk
    assert len(entries(tmp_path)) == 3  # one per namespace


def corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "flip":
        at = len(raw) - 5
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])
    elif how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign":
        path.write_bytes(b"\x80\x04K\x01.")  # a pickle
    elif how == "other-key":
        # Well-formed, right checksum, but the key is another one: a foreign file.
        body = json.loads(raw[raw.index(b"\n", len(MAGIC)) + 1 :])
        body["key"] = "something else"
        blob = json.dumps(body).encode()
        path.write_bytes(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
    elif how == "bad-entry":
        body = json.loads(raw[raw.index(b"\n", len(MAGIC)) + 1 :])
        body["entry"] = {"dataclass": "Popen", "fields": {"args": "rm -rf /"}}
        blob = json.dumps(body).encode()
        path.write_bytes(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)


@pytest.mark.parametrize("how", ["flip", "truncate", "empty", "foreign", "other-key", "bad-entry"])
async def test_a_bad_file_is_deleted_and_recompiled(tmp_path: Path, how: str) -> None:
    first, _, _ = await compile_once(tmp_path, [SCHEMA])
    (path,) = entries(tmp_path)
    corrupt(path, how)
    again, hit, compiler = await compile_once(tmp_path, [SCHEMA])
    assert (hit, again.from_disk) == (False, False)
    assert again == first
    disk = compiler.disk_stats()
    assert disk is not None
    assert (disk.discarded, disk.writes) == (1, 1)
    # Recompiled and written again, whole.
    third, _, _ = await compile_once(tmp_path, [SCHEMA])
    assert third.from_disk


async def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    one, _, _ = await compile_once(tmp_path, [regex("a+")])
    (first_file,) = entries(tmp_path)
    size = first_file.stat().st_size
    bound = int(size * 2.5)  # room for two entries of about this size
    compiler = make_compiler(tmp_path, disk_cache_bytes=bound)
    try:
        old = time.time() - 100
        os.utime(first_file, (old, old))
        await compiler.compile([regex("b+")], P)
        (second_file,) = set(entries(tmp_path)) - {first_file}
        os.utime(second_file, (old + 10, old + 10))
        # Loading touches the first entry: now the second is the oldest.
        compiled, _ = await compiler.compile([regex("a+")], P)
        assert compiled.from_disk
        assert compiled == one
        await compiler.compile([regex("c+")], P)
        left = set(entries(tmp_path))
        assert first_file in left
        assert second_file not in left
        assert len(left) == 2
        disk = compiler.disk_stats()
        assert disk is not None
        assert disk.entries == 2
        assert disk.bytes <= bound
    finally:
        compiler.close()


async def test_an_entry_larger_than_the_bound_is_not_written(tmp_path: Path) -> None:
    _, _, compiler = await compile_once(tmp_path, [SCHEMA], disk_cache_bytes=64)
    assert entries(tmp_path) == []
    disk = compiler.disk_stats()
    assert disk is not None
    assert disk.writes == 0


async def test_no_disk_cache_when_the_bound_is_zero(tmp_path: Path) -> None:
    _, _, compiler = await compile_once(tmp_path, [SCHEMA], disk_cache_bytes=0)
    assert compiler.disk_stats() is None
    assert entries(tmp_path) == []


def test_writes_are_atomic_and_leftovers_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-crashed.entry"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".tmp-writing.entry"
    fresh.write_bytes(b"in progress")
    cache = DiskCache(tmp_path, max_bytes=1 << 20, version="v")
    assert not stale.exists()
    assert fresh.exists()
    error = ServiceError("REGEX_INVALID", "bad", (FieldViolation("f", "bad"),), {"field": "f"})
    cache.store("k", error)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == [fresh.name]
    assert cache.load("k") == error
    assert cache.stats().entries == 1  # temporary files are not entries


def test_codec_round_trip_and_refusals() -> None:
    summary = provenance_pb2.ConstraintSummary(name="x", kind=c.CONSTRAINT_KIND_REGEX, priority=2)
    value = (None, 1, 2.5, "s", frozenset({3, 1}), {"a": [1]}, grpc.StatusCode.NOT_FOUND, summary)
    assert decode(json.loads(json.dumps(encode(value)))) == value
    with pytest.raises(UnencodableError):
        encode(object())
    with pytest.raises(ValueError, match="foreign message"):
        decode({"proto": "google.protobuf.Any", "bytes": ""})
    with pytest.raises(KeyError):
        decode({"dataclass": "Popen", "fields": {}})


def test_namespace_changes_with_the_vocabulary() -> None:
    byte = namespace(
        TOKENIZER, tokenizer_id="t", vocab_size=256, eos_ids=(0,), max_constraint_bytes=1
    )
    assert "llguidance=" in byte
    assert "compiler=" in byte
    assert byte != namespace(
        TOKENIZER, tokenizer_id="t", vocab_size=256, eos_ids=(1,), max_constraint_bytes=1
    )
    assert len(tokenizer_fingerprint(TOKENIZER)) == 64


async def test_a_schema_checked_by_a_validator_stays_in_memory_only(tmp_path: Path) -> None:
    # uniqueItems is not in the grammar: a jsonschema validator (a Python
    # object, not stored on disk) checks every output instead.
    prepared = schema('{"type":"array","items":{"type":"integer"},"uniqueItems":true}')
    first, _, compiler = await compile_once(tmp_path, [prepared])
    assert first.validated  # the validator is part of the result
    assert entries(tmp_path) == []
    disk = compiler.disk_stats()
    assert disk is not None
    assert disk.writes == 0
    again, _, _ = await compile_once(tmp_path, [prepared])
    assert not again.from_disk
    assert again.validated


async def test_structural_region_checks_round_trip(tmp_path: Path) -> None:
    region = c.ConstrainedRegion(begin="<n>", end="</n>", constraint=regex("[0-9]+"))
    items = [c.ConstraintIR(structural=c.StructuralConstraint(regions=[region]))]
    first, _, _ = await compile_once(tmp_path, items)
    assert first.region_checks
    second, _, _ = await compile_once(tmp_path, items)
    assert second.from_disk
    assert second == first
