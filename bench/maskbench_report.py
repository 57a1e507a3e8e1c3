"""JSON Schema conformance on real data (MaskBench subset in
../shared/data/maskbench): every schema goes through the service's own compile
path (ConstraintCompiler, as a GenerationRequest with one JsonSchemaConstraint
at default options), every labelled test document through a matcher built from
the grammar the engine would get, tokenized with the default model's
tokenizer. The same is done with llguidance used directly
(LLMatcher.grammar_from_json_schema with the project's default options) so
that any loss due to this project's conversion shows as a disagreement.

A document is accepted iff the matcher consumes all its tokens and is then
accepting. Documents are rendered the only way the default options allow:
compact, `json.dumps(data, separators=(",", ":"), ensure_ascii=False)` (no
whitespace is allowed when whitespace_flexible is false), keys in the
document's own order. llguidance generates object properties in schema order,
so a valid document whose keys are in another order is rejected by both sides
alike; that is a property of llguidance, not a conversion loss.

    .venv/bin/python bench/maskbench_report.py            # markdown table
    .venv/bin/python bench/maskbench_report.py --json out.json --top 15
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MASKBENCH = ROOT.parent / "shared" / "data" / "maskbench"
for _path in (ROOT / "service", ROOT / "clients" / "python" / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from ananke.v1 import constraints_pb2  # noqa: E402
from ananke_server.constraints import CompiledConstraints, ConstraintCompiler  # noqa: E402
from ananke_server.constraints.schema_check import SchemaCheck  # noqa: E402
from ananke_server.constraints.schema_logic import pointer_get, resolve  # noqa: E402
from ananke_server.errors import ServiceError  # noqa: E402
from llguidance import LLMatcher, LLParserLimits, LLTokenizer  # noqa: E402

DEFAULT_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}  # the project's defaults


@dataclass
class Case:
    """One schema file of the corpus."""

    name: str
    schema: Any
    tests: list[tuple[bool, Any]]  # (valid, data)


@dataclass
class Side:
    """Results of one compile path."""

    compiled: int = 0
    validated: int = 0  # served with output validation (the grammar over-approximates)
    valid_accepted: int = 0  # by the grammar (and by the validator, where one runs)
    valid_accepted_grammar: int = 0  # by the grammar alone
    valid_accepted_reordered: int = 0  # by grammar (+ validator), keys in schema order
    invalid_rejected: int = 0  # by the grammar or the validator
    invalid_rejected_grammar: int = 0  # by the grammar alone
    errors: Counter[str] = field(default_factory=Counter)
    compile_seconds: float = 0.0
    verdicts: dict[tuple[str, int], bool] = field(default_factory=dict)  # grammar accepts?
    compiled_names: set[str] = field(default_factory=set)
    validated_names: set[str] = field(default_factory=set)
    # (schema, test index, valid?) where grammar + validator decide against the label
    wrong: list[tuple[str, int, bool]] = field(default_factory=list)

    @property
    def exact(self) -> int:
        """Schemas served with the grammar enforcing every keyword."""
        return self.compiled - self.validated


@dataclass
class Report:
    """Both sides over the whole corpus."""

    schemas: int
    valid_docs: int
    invalid_docs: int
    project: Side
    direct: Side
    seconds: float

    def disagreements(self) -> list[tuple[str, int, bool, bool]]:
        """(schema, test index, project grammar accepted, direct accepted) where they
        differ, on schemas both sides compiled."""
        keys = set(self.project.verdicts) & set(self.direct.verdicts)
        found = []
        for key in sorted(keys):
            p = self.project.verdicts.get(key, False)
            d = self.direct.verdicts.get(key, False)
            if p != d:
                found.append((key[0], key[1], p, d))
        return found

    def compile_mismatches(self) -> tuple[list[str], list[str]]:
        """Schemas only llguidance compiled, and schemas only the project compiled."""
        p, d = self.project.compiled_names, self.direct.compiled_names
        return sorted(d - p), sorted(p - d)

    def as_dict(self, top: int = 10) -> dict[str, Any]:
        """A JSON-friendly summary."""
        only_direct, only_project = self.compile_mismatches()
        return {
            "schemas": self.schemas,
            "valid_docs": self.valid_docs,
            "invalid_docs": self.invalid_docs,
            "seconds": round(self.seconds, 1),
            "disagreements": len(self.disagreements()),
            "compiled_only_by_direct": only_direct,
            "compiled_only_by_project": only_project,
            **{
                name: {
                    "compiled": side.compiled,
                    "validated": side.validated,
                    "valid_accepted": side.valid_accepted,
                    "valid_accepted_grammar": side.valid_accepted_grammar,
                    "valid_accepted_reordered": side.valid_accepted_reordered,
                    "invalid_rejected": side.invalid_rejected,
                    "invalid_rejected_grammar": side.invalid_rejected_grammar,
                    "compile_seconds": round(side.compile_seconds, 1),
                    "errors": side.errors.most_common(top),
                }
                for name, side in (("project", self.project), ("direct", self.direct))
            },
        }


def load_corpus(folder: Path = MASKBENCH) -> list[Case]:
    """Every schema file, in name order."""
    cases = []
    for path in sorted(folder.glob("*.json")):
        item = json.loads(path.read_text())
        tests = [(bool(t["valid"]), t["data"]) for t in item.get("tests", [])]
        cases.append(Case(path.name, item["schema"], tests))
    return cases


def default_tokenizer() -> tuple[LLTokenizer, Any]:
    """The default model's tokenizer, as llguidance and as Hugging Face sees it
    (built like vLLM's guidance backend builds it)."""
    import transformers
    from ananke_server.model_prep import prepare_default_model
    from llguidance.hf import from_tokenizer

    folder = prepare_default_model()
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = json.loads((Path(folder) / "config.json").read_text())
    n_vocab = max(int(config.get("vocab_size", 0)), len(hf))
    return from_tokenizer(hf, n_vocab), hf


def render(data: Any) -> str:
    """The one rendering the default (compact) options accept."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        text.encode()
        return text
    except UnicodeEncodeError:  # a lone surrogate: keep it escaped
        return json.dumps(data, separators=(",", ":"))


def _property_schemas(schema: Any, root: Any, seen: int = 0) -> dict[str, Any]:
    """Property name -> subschema, in the order llguidance generates them
    (properties first seen first, across $ref/allOf/anyOf/oneOf branches)."""
    found: dict[str, Any] = {}
    if seen > 20 or not isinstance(schema, dict):
        return found
    if isinstance(schema.get("$ref"), str):
        found.update(_property_schemas(pointer_get(root, schema["$ref"]), root, seen + 1))
    for name, sub in (schema.get("properties") or {}).items():
        found.setdefault(name, sub)
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key) or []:
            for name, sub in _property_schemas(branch, root, seen + 1).items():
                found.setdefault(name, sub)
    return found


def in_schema_order(data: Any, schema: Any, root: Any) -> Any:
    """`data` with every object's keys in schema order (unknown keys last):
    the only order llguidance accepts, whatever order JSON Schema allows."""
    if isinstance(data, dict):
        order = _property_schemas(resolve(schema, root), root)
        known = [k for k in order if k in data]
        keys = known + [k for k in data if k not in order]
        return {k: in_schema_order(data[k], order.get(k), root) for k in keys}
    if isinstance(data, list):
        items = (
            resolve(schema, root).get("items") if isinstance(resolve(schema, root), dict) else None
        )
        return [in_schema_order(v, items if isinstance(items, dict) else None, root) for v in data]
    return data


_PREFIX = re.compile(r"^constraints\[0\]\.json_schema\.schema: ")


def normalize(message: str) -> str:
    """An error message without the field path and instance details, for counting."""
    text = _PREFIX.sub("", message.strip().splitlines()[0] if message.strip() else "")
    text = re.sub(r"^at \d+\(\d+\): ", "", text).removeprefix("failed to compile JSON schema: ")
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"\b\d+\b", "N", text)
    return text[:120]


class Conformance:
    """Runs the corpus through both compile paths."""

    def __init__(self, tokenizer: LLTokenizer, hf_tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.hf = hf_tokenizer
        self.limits = LLParserLimits(verbose_errors=False)
        self.compiler = ConstraintCompiler(
            tokenizer,
            vocab_size=tokenizer.vocab_size,
            tokenizer_id="maskbench",
            max_constraint_bytes=1 << 20,
            cache_size=0,
            timeout_s=60.0,
            workers=1,
        )

    def close(self) -> None:
        self.compiler.close()

    def project_grammar(self, schema: Any) -> tuple[str, list[SchemaCheck]]:
        """The grammar the engine would get for this schema and the validators
        its outputs go through; raises ServiceError."""
        constraint = constraints_pb2.ConstraintIR(
            json_schema=constraints_pb2.JsonSchemaConstraint(
                schema=json.dumps(schema, ensure_ascii=False)
            )
        )
        result = self.compiler._compile_now([constraint], "constraints")
        if isinstance(result, ServiceError):
            raise result
        assert isinstance(result, CompiledConstraints)
        assert result.grammar is not None
        return result.grammar, list(result.validated)

    def direct_grammar(self, schema: Any) -> tuple[str, list[SchemaCheck]]:
        """llguidance alone, the project's default options; raises ValueError."""
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=DEFAULT_OPTIONS)  # type: ignore[arg-type]
        is_error, messages = LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer, limits=self.limits
        )
        if is_error:
            raise ValueError(messages[0] if messages else "invalid grammar")
        return grammar, []

    def accepts(self, matcher: LLMatcher, tokens: Sequence[int]) -> bool:
        matcher.reset()
        consumed = matcher.try_consume_tokens(list(tokens))
        return consumed == len(tokens) and matcher.is_accepting() and not matcher.is_error()

    def run(self, cases: Sequence[Case]) -> Report:
        started = time.perf_counter()
        project, direct = Side(), Side()
        valid_docs = sum(1 for case in cases for valid, _ in case.tests if valid)
        invalid_docs = sum(1 for case in cases for valid, _ in case.tests if not valid)
        for case in cases:
            texts = [render(data) for _, data in case.tests]
            tokens = [self.hf.encode(t, add_special_tokens=False) for t in texts]
            for side, build in ((project, self.project_grammar), (direct, self.direct_grammar)):
                t0 = time.perf_counter()
                try:
                    grammar, checks = build(case.schema)
                except (ServiceError, ValueError) as error:
                    side.compile_seconds += time.perf_counter() - t0
                    message = error.message if isinstance(error, ServiceError) else str(error)
                    side.errors[normalize(message)] += 1
                    continue
                side.compile_seconds += time.perf_counter() - t0
                side.compiled += 1
                side.compiled_names.add(case.name)
                if checks:
                    side.validated += 1
                    side.validated_names.add(case.name)
                matcher = LLMatcher(self.tokenizer, grammar, log_level=0, limits=self.limits)
                for index, ((valid, _), ids, text) in enumerate(
                    zip(case.tests, tokens, texts, strict=True)
                ):
                    accepted = self.accepts(matcher, ids)
                    side.verdicts[(case.name, index)] = accepted
                    final = accepted and all(check.check(text) is None for check in checks)
                    side.valid_accepted_grammar += valid and accepted
                    side.invalid_rejected_grammar += not valid and not accepted
                    side.valid_accepted += valid and final
                    side.invalid_rejected += not valid and not final
                    if valid and not final:
                        # Rejected: is it only the key order llguidance imposes?
                        ordered = render(
                            in_schema_order(case.tests[index][1], case.schema, case.schema)
                        )
                        again = self.accepts(
                            matcher, self.hf.encode(ordered, add_special_tokens=False)
                        )
                        final = again and all(check.check(ordered) is None for check in checks)
                    side.valid_accepted_reordered += valid and final
                    if final != valid:
                        side.wrong.append((case.name, index, valid))
        return Report(
            len(cases), valid_docs, invalid_docs, project, direct, time.perf_counter() - started
        )


def markdown(report: Report, top: int = 10) -> str:
    """The report as markdown tables."""
    p, d = report.project, report.direct

    def pct(n: int, total: int) -> str:
        return f"{n:,} / {total:,} ({100 * n / max(total, 1):.1f}%)"

    lines = [
        f"MaskBench subset: {report.schemas:,} schemas, {report.valid_docs:,} valid and "
        f"{report.invalid_docs:,} invalid test documents; default model tokenizer; "
        f"{report.seconds:.0f} s.",
        "",
        "| | Ananke (service compile path) | llguidance directly |",
        "|---|---|---|",
        f"| schemas served | {pct(p.compiled, report.schemas)} | "
        f"{pct(d.compiled, report.schemas)} |",
        f"| … enforced fully by the grammar | {pct(p.exact, report.schemas)} | "
        f"{pct(d.compiled, report.schemas)} |",
        f"| … grammar over-approximates, output validated | "
        f"{pct(p.validated, report.schemas)} | n/a |",
        f"| valid documents accepted by the grammar | "
        f"{pct(p.valid_accepted_grammar, report.valid_docs)} | "
        f"{pct(d.valid_accepted_grammar, report.valid_docs)} |",
        f"| valid documents accepted (grammar + validator) | "
        f"{pct(p.valid_accepted, report.valid_docs)} | n/a |",
        f"| … with keys in schema order (the order llguidance generates) | "
        f"{pct(p.valid_accepted_reordered, report.valid_docs)} | "
        f"{pct(d.valid_accepted_reordered, report.valid_docs)} |",
        f"| invalid documents rejected by the grammar | "
        f"{pct(p.invalid_rejected_grammar, report.invalid_docs)} | "
        f"{pct(d.invalid_rejected_grammar, report.invalid_docs)} |",
        f"| invalid documents rejected (grammar + validator) | "
        f"{pct(p.invalid_rejected, report.invalid_docs)} | n/a |",
        f"| compile time (s) | {p.compile_seconds:.1f} | {d.compile_seconds:.1f} |",
        "",
        f"Documents where the two grammars disagree (schemas both compile): "
        f"{len(report.disagreements())}. "
        f"Schemas compiled only by llguidance directly: {len(report.compile_mismatches()[0])}; "
        f"only by Ananke: {len(report.compile_mismatches()[1])}.",
        "",
        f"Compile errors by message (top {top}):",
        "",
        "| Ananke | direct | message (quoted names and numbers elided) |",
        "|---:|---:|---|",
    ]
    for message, _count in (p.errors + d.errors).most_common(top):
        lines.append(f"| {p.errors[message]} | {d.errors[message]} | {message.replace('|', '/')} |")
    lines.append(f"| {sum(p.errors.values())} | {sum(d.errors.values())} | all compile errors |")
    return "\n".join(lines)


def iter_limit(cases: list[Case], limit: int | None) -> Iterator[Case]:
    yield from cases[:limit] if limit else cases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=MASKBENCH)
    parser.add_argument("--limit", type=int, default=None, help="only the first N schemas")
    parser.add_argument("--top", type=int, default=10, help="error messages to list")
    parser.add_argument("--json", type=Path, default=None, help="also write a JSON summary")
    args = parser.parse_args(argv)
    tokenizer, hf = default_tokenizer()
    conformance = Conformance(tokenizer, hf)
    try:
        report = conformance.run(list(iter_limit(load_corpus(args.data), args.limit)))
    finally:
        conformance.close()
    print(markdown(report, args.top))
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(args.top), indent=2) + "\n")
    return 0 if not report.disagreements() and not report.compile_mismatches()[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
