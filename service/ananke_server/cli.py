"""`ananke-server`: serve constrained generation over gRPC."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .logging_setup import configure_logging
from .settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parses settings, configures logging and serves until stopped."""
    try:
        settings = load_settings(argv)
    except (ValueError, OSError) as error:
        print(f"ananke-server: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # vLLM must not probe the network for its own address or report usage.
    for key, value in {
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(key, value)
    from .server import serve

    try:
        if settings.event_loop == "uvloop":
            # vLLM's own server runs on uvloop too: its loop costs less per
            # callback, and a streamed token is several callbacks here.
            import uvloop

            return uvloop.run(serve(settings))
        return asyncio.run(serve(settings))
    except OSError as error:
        logging.getLogger("ananke.server").error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
