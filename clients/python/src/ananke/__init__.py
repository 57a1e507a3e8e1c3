"""Ananke: constrained code generation over gRPC (client package).

`AnankeClient` (blocking) and `AsyncAnankeClient` (asyncio) wrap the
generated `ananke.v1` stubs; `ananke.constraints` builds constraints; every
failed call raises `AnankeError`.
"""

from ananke import constraints
from ananke.aio import AsyncAnankeClient, AsyncGenerationStream
from ananke.client import AnankeClient, GenerationStream
from ananke.errors import AnankeError, FieldViolation
from ananke.request import build_generation_request
from ananke.results import (
    GenerationFinished,
    GenerationResult,
    GenerationStarted,
    StreamEvent,
    TokenChunk,
)
from ananke.retry import NO_RETRY, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "AnankeClient",
    "AnankeError",
    "AsyncAnankeClient",
    "AsyncGenerationStream",
    "FieldViolation",
    "GenerationFinished",
    "GenerationResult",
    "GenerationStarted",
    "GenerationStream",
    "RetryPolicy",
    "StreamEvent",
    "TokenChunk",
    "__version__",
    "build_generation_request",
    "constraints",
]
