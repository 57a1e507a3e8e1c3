"""Settings shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from ananke.constraints import ConstraintIR
from ananke.errors import AnankeError
from ananke.retry import RetryPolicy
from ananke.transport import DEFAULT_ADDRESS, ConnectionConfig, PemSource
from ananke.v1 import inference_service_pb2

__all__ = ["ClientBase", "health_status_name", "incomplete_stream_error"]


class ClientBase:
    """Connection config, default deadline, retry policy and call metadata."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        call_metadata: Iterable[tuple[str, str]] = (),
        options: Iterable[tuple[str, int | str]] = (),
        wait_for_ready: bool | None = None,
    ) -> None:
        self.config = ConnectionConfig(
            address=address,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            server_name=server_name,
            api_key=api_key,
            credentials=credentials,
            options=tuple(options),
        )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = self.config.call_metadata(tuple(call_metadata))
        self._wait_for_ready = wait_for_ready
        self._open()

    def _open(self) -> None:
        """Open the channel and stubs (each client does its own)."""
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _call_metadata(
        self, extra: Mapping[str, str] | Iterable[tuple[str, str]] | None
    ) -> tuple[tuple[str, str], ...]:
        if not extra:
            return self._metadata
        items = extra.items() if isinstance(extra, Mapping) else extra
        return self._metadata + tuple(items)

    @staticmethod
    def _validate_request(
        constraints: ConstraintIR | Iterable[ConstraintIR],
    ) -> inference_service_pb2.ValidateConstraintsRequest:
        if isinstance(constraints, ConstraintIR):
            constraints = [constraints]
        return inference_service_pb2.ValidateConstraintsRequest(constraints=list(constraints))


def health_status_name(status: int) -> str:
    """A `grpc.health.v1` serving status as its name, for example "SERVING"."""
    from grpc_health.v1 import health_pb2

    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def incomplete_stream_error() -> AnankeError:
    """The error for a stream that ended without its GenerationFinished event."""
    return AnankeError(
        grpc.StatusCode.UNKNOWN, "the stream ended without a GenerationFinished event"
    )
