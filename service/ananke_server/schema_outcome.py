"""What validation against the original JSON schemas decides about one output:
pure functions the generation path uses to validate, pick a retry's sampling,
fail after the last attempt, and report per constraint in provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ananke.v1 import constraints_pb2, provenance_pb2

from .constraints import CompiledConstraints
from .constraints.schema_check import SchemaCheck, Violation
from .errors import FieldViolation, ServiceError
from .validation import Sampling

_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive attempts over the seed space


@dataclass(frozen=True)
class SchemaOutcome:
    """The validator's verdicts on one output, one per validated schema check."""

    attempts: int
    complete: bool  # False: the output was cut short, nothing was validated
    verdicts: tuple[tuple[SchemaCheck, Violation | None], ...] = ()

    @property
    def rejected(self) -> tuple[SchemaCheck, Violation] | None:
        """The first violation that calls for another attempt (not lenient)."""
        for check, violation in self.verdicts:
            if violation is not None and check.retried:
                return check, violation
        return None


def validate_output(
    compiled: CompiledConstraints, text: str, *, complete: bool, attempts: int
) -> SchemaOutcome:
    """Validates `text` with every validated schema check of `compiled`; an
    incomplete output (cut by max_tokens or a stop sequence) is not checked."""
    if not complete:
        return SchemaOutcome(attempts, False)
    verdicts = tuple((check, check.check(text)) for check in compiled.validated)
    return SchemaOutcome(attempts, True, verdicts)


def retry_sampling(sampling: Sampling, attempt: int, retry_temperature: float) -> Sampling:
    """The sampling of attempt `attempt` (from 2): a new seed derived from the
    first one (so the whole run is reproducible from provenance), and
    `retry_temperature` instead of greedy decoding, which would repeat itself."""
    seed = (sampling.seed + (attempt - 1) * _GOLDEN) % (1 << 63)
    temperature = sampling.temperature or retry_temperature
    return dataclasses.replace(sampling, seed=seed, temperature=temperature)


def not_satisfied(check: SchemaCheck, violation: Violation, attempts: int) -> ServiceError:
    """CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES for the last attempt's violation."""
    where = f" at {violation.instance_pointer}" if violation.instance_pointer else ""
    message = (
        f"{check.path}: {attempts} attempt(s) produced no output valid against the schema; "
        f"the last one fails{where}: {violation.message}"
    )
    return ServiceError(
        "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES",
        message,
        (FieldViolation(check.path, violation.message),),
        {
            "field": check.path,
            "attempts": str(attempts),
            "message": violation.message[:500],
            "instance_pointer": violation.instance_pointer,
            "schema_pointer": violation.schema_pointer,
        },
    )


def keyword_protos(check: SchemaCheck) -> list[constraints_pb2.SchemaKeyword]:
    """How each keyword the preparation touched is enforced."""
    relaxed = (
        constraints_pb2.KEYWORD_ENFORCEMENT_VALIDATION
        if check.retried
        else constraints_pb2.KEYWORD_ENFORCEMENT_IGNORED
    )
    return [
        constraints_pb2.SchemaKeyword(
            pointer=k.pointer,
            keyword=k.keyword,
            enforcement=constraints_pb2.KEYWORD_ENFORCEMENT_GRAMMAR if k.exact else relaxed,
            detail=k.how,
        )
        for k in check.keywords
    ]


def _validation(
    checks: Sequence[SchemaCheck], outcome: SchemaOutcome
) -> provenance_pb2.SchemaValidation | None:
    if not any(check.validated for check in checks):
        return None
    if not outcome.complete:
        return provenance_pb2.SchemaValidation(verdict=provenance_pb2.SCHEMA_VERDICT_NOT_CHECKED)
    for check, violation in outcome.verdicts:
        if check in checks and violation is not None:
            return provenance_pb2.SchemaValidation(
                verdict=provenance_pb2.SCHEMA_VERDICT_INVALID,
                message=violation.message,
                instance_pointer=violation.instance_pointer,
                schema_pointer=violation.schema_pointer,
            )
    return provenance_pb2.SchemaValidation(verdict=provenance_pb2.SCHEMA_VERDICT_VALID)


def summaries(
    compiled: CompiledConstraints, outcome: SchemaOutcome | None
) -> list[provenance_pb2.ConstraintSummary]:
    """The constraint summaries with each one's schema keywords, attempts and
    validator verdict filled in."""
    items = []
    checks_by_item = compiled.summary_checks or tuple(() for _ in compiled.summaries)
    for summary, checks in zip(compiled.summaries, checks_by_item, strict=True):
        item = provenance_pb2.ConstraintSummary()
        item.CopyFrom(summary)
        for check in checks:
            item.schema_keywords.extend(keyword_protos(check))
        validation = _validation(checks, outcome) if outcome is not None else None
        if validation is not None and outcome is not None:
            item.attempts = outcome.attempts
            item.validation.CopyFrom(validation)
        items.append(item)
    return items
