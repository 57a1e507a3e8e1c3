"""API keys and TLS against a real server (`guarded_server`: keys from a flag
and a file, mTLS with a test CA): no key, wrong key, right key; health and
reflection exempt; keys never logged; clients without a certificate, or not
trusting the CA, or in plaintext are refused. Plain TLS (no client CA) is
checked in-process on the real grpc.aio server without an engine."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from ananke.v1 import generation_pb2, inference_service_pb2
from ananke_server.server import build_server
from ananke_server.settings import Settings
from conftest import GuardedServer
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from pki import Pki

SMALL = inference_service_pb2.GenerateStreamRequest(
    request=generation_pb2.GenerationRequest(
        prompt="Hello", sampling=generation_pb2.SamplingParams(max_tokens=2)
    )
)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1
    assert infos[0].domain == "ananke.dev"
    return infos[0].reason


CALLS = {
    "GenerateStream": lambda stub, md: list(stub.GenerateStream(SMALL, metadata=md, timeout=60)),
    "Generate": lambda stub, md: stub.Generate(
        inference_service_pb2.GenerateRequest(request=SMALL.request), metadata=md, timeout=60
    ),
    "GetModelInfo": lambda stub, md: stub.GetModelInfo(
        inference_service_pb2.GetModelInfoRequest(), metadata=md, timeout=10
    ),
    "GetServerStats": lambda stub, md: stub.GetServerStats(
        inference_service_pb2.GetServerStatsRequest(), metadata=md, timeout=10
    ),
}
BAD_CREDENTIALS = [
    ("no key", None, "API_KEY_MISSING"),
    ("empty bearer", (("authorization", ""),), "API_KEY_MISSING"),
    ("wrong key", (("authorization", "Bearer wrong-key-123"),), "API_KEY_INVALID"),
    ("key prefix", (("authorization", "Bearer ak-test"),), "API_KEY_INVALID"),
    ("basic scheme", (("authorization", "Basic ak-test-7f3c9a"),), "API_KEY_INVALID"),
    ("bare key", (("authorization", "ak-test-7f3c9a"),), "API_KEY_INVALID"),
]


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    ("case", "metadata", "reason"), BAD_CREDENTIALS, ids=[c[0] for c in BAD_CREDENTIALS]
)
def test_bad_credentials_unauthenticated(
    guarded_server: GuardedServer, method: str, case: str, metadata: Any, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        CALLS[method](guarded_server.stub(), metadata)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
    assert _reason(raised.value) == reason


def test_right_keys_work(guarded_server: GuardedServer) -> None:
    stub = guarded_server.stub()
    for key in (guarded_server.api_key, "ak-other-key"):  # from the file, from the flag
        events = CALLS["GenerateStream"](stub, guarded_server.auth(key))
        assert events[-1].WhichOneof("event") == "finished"
    info = CALLS["GetModelInfo"](stub, (("authorization", f"bearer  {guarded_server.api_key}"),))
    assert info.model_id


def test_health_and_reflection_exempt(guarded_server: GuardedServer) -> None:
    with guarded_server.server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert "ananke.v1.InferenceService" in names


def test_keys_never_logged(guarded_server: GuardedServer) -> None:
    with pytest.raises(grpc.RpcError):
        CALLS["GetModelInfo"](guarded_server.stub(), (("authorization", "Bearer leak-me-42"),))
    CALLS["GetModelInfo"](guarded_server.stub(), guarded_server.auth())
    log = guarded_server.server.log_path.read_text(errors="replace")
    for secret in (guarded_server.api_key, "ak-other-key", "leak-me-42"):
        assert secret not in log


def _health_status(address: str, credentials: grpc.ChannelCredentials | None) -> Any:
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            .status
        )


def _refused(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _health_status(address, credentials)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_rejects_clients_without_a_certificate(guarded_server: GuardedServer) -> None:
    pki, address = guarded_server.pki, guarded_server.server.address
    ca = pki.ca.read_bytes()
    _refused(address, grpc.ssl_channel_credentials(root_certificates=ca))  # no client cert
    _refused(address, None)  # plaintext
    _refused(  # a client that does not trust the server's CA
        address,
        grpc.ssl_channel_credentials(
            root_certificates=pki.other_ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        ),
    )
    _refused(  # a client certificate the client CA did not sign
        address,
        grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki.stranger_key.read_bytes(),
            certificate_chain=pki.stranger_cert.read_bytes(),
        ),
    )
    assert _health_status(address, guarded_server.server.credentials) == (
        health_pb2.HealthCheckResponse.SERVING
    )


async def _tls_only_statuses(pki: Pki) -> list[Any]:
    settings = dataclasses.replace(
        Settings(),
        host="127.0.0.1",
        port=0,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
    )
    running = build_server(settings, engine=None)  # type: ignore[arg-type]  # health only
    await running.state.serve()
    await running.server.start()
    address = f"127.0.0.1:{running.port}"
    try:
        trusted = await asyncio.to_thread(
            _health_status,
            address,
            grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes()),
        )
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.read_bytes())
        outcomes = [trusted]
        for credentials in (untrusted, None):
            try:
                outcomes.append(await asyncio.to_thread(_health_status, address, credentials))
            except grpc.RpcError as error:
                outcomes.append(error.code())  # type: ignore[attr-defined]
        return outcomes
    finally:
        await running.server.stop(0)


def test_tls_without_client_ca(test_pki: Pki) -> None:
    outcomes = asyncio.run(_tls_only_statuses(test_pki))
    assert outcomes == [
        health_pb2.HealthCheckResponse.SERVING,  # client trusting the test CA, no client cert
        grpc.StatusCode.UNAVAILABLE,  # client trusting another CA
        grpc.StatusCode.UNAVAILABLE,  # plaintext client
    ]
