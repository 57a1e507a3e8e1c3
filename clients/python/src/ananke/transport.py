"""Connection settings: target address, TLS credentials, API key metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = ["DEFAULT_ADDRESS", "ConnectionConfig", "PemSource"]

DEFAULT_ADDRESS = "localhost:50051"

# PEM bytes, or a path to a PEM file.
PemSource = bytes | str | os.PathLike[str]

# Generous limits: provenance and long outputs can exceed gRPC's 4 MiB default.
_DEFAULT_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True)
class ConnectionConfig:
    """Where and how to connect; shared by the sync and asyncio clients.

    `address` is "host:port"; an "https://" prefix turns TLS on, "http://"
    is stripped. TLS is on when `tls` is set or any certificate option is
    given; `root_certificates` defaults to the system roots. `client_certificate`
    and `client_key` (both or neither) enable mutual TLS. `api_key` is sent
    as `authorization: Bearer <key>` on every call.
    """

    address: str = DEFAULT_ADDRESS
    tls: bool = False
    root_certificates: PemSource | None = None
    client_certificate: PemSource | None = None
    client_key: PemSource | None = None
    server_name: str | None = None
    api_key: str | None = None
    credentials: grpc.ChannelCredentials | None = None
    options: tuple[tuple[str, int | str], ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together (mutual TLS)")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")

    @property
    def target(self) -> str:
        """The gRPC target, without any URL scheme."""
        for scheme in ("https://", "http://", "grpcs://", "grpc://"):
            if self.address.startswith(scheme):
                return self.address[len(scheme) :].rstrip("/")
        return self.address

    @property
    def uses_tls(self) -> bool:
        """Whether the channel is secure."""
        return (
            self.tls
            or self.credentials is not None
            or self.address.startswith(("https://", "grpcs://"))
            or any(
                x is not None
                for x in (self.root_certificates, self.client_certificate, self.client_key)
            )
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the channel, or None for plaintext."""
        if self.credentials is not None:
            return self.credentials
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.root_certificates),
            private_key=_read_pem(self.client_key),
            certificate_chain=_read_pem(self.client_certificate),
        )

    def channel_options(self) -> list[tuple[str, int | str]]:
        """Channel arguments: defaults, the TLS name override, then the caller's."""
        options = dict(_DEFAULT_OPTIONS)
        if self.server_name:
            options["grpc.ssl_target_name_override"] = self.server_name
        options.update(dict(self.options))
        return list(options.items())

    def call_metadata(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call: the API key, then `extra`."""
        auth = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        return auth + tuple(extra)

    def sync_channel(self) -> grpc.Channel:
        """Open a blocking channel."""
        creds = self.channel_credentials()
        if creds is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(self.target, creds, options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        """Open an asyncio channel (call from inside the event loop)."""
        creds = self.channel_credentials()
        if creds is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(self.target, creds, options=self.channel_options())
