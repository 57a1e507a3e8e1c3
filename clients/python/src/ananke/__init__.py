"""Ananke: constrained code generation over gRPC (client package)."""

__version__ = "0.1.0"
