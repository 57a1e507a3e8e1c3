"""Ananke inference service: constrained code generation over gRPC."""

# The server's own version (pyproject.toml's; a test keeps them equal). Kept in
# the source because Modal runs the package from source, without metadata.
__version__ = "0.1.0"
