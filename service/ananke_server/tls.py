"""TLS and mTLS server credentials from PEM files named in the settings."""

from __future__ import annotations

from pathlib import Path

import grpc

from .settings import Settings


def tls_enabled(settings: Settings) -> bool:
    """Whether the server listens with TLS."""
    return bool(settings.tls_cert_file and settings.tls_key_file)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext. With `tls_client_ca_file` set the
    server requires, and verifies against that CA, a client certificate (mTLS)."""
    if not tls_enabled(settings):
        return None
    try:
        cert = Path(settings.tls_cert_file).read_bytes()
        key = Path(settings.tls_key_file).read_bytes()
        client_ca = (
            Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
        )
    except OSError as error:
        raise OSError(f"cannot read TLS files: {error}") from error
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
