"""The LoRA adapter RPCs of InferenceService (LoadAdapter, UnloadAdapter,
ListAdapters), mixed into the servicer; admin-only calls are enforced by the
API-key interceptor (interceptors.ApiKeyCheck)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import grpc
from ananke.v1 import inference_service_pb2

from .adapters import Adapters

Context = grpc.aio.ServicerContext[object, object]

# Full method names the API-key check reserves for admin keys.
ADMIN_METHODS = frozenset(
    {
        "/ananke.v1.InferenceService/LoadAdapter",
        "/ananke.v1.InferenceService/UnloadAdapter",
    }
)


class AdapterRpcs:
    """LoadAdapter, UnloadAdapter and ListAdapters over the servicer's Adapters."""

    adapters: Adapters

    def _failures(self, context: Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError  # the servicer's failure mapping

    def _check_ready(self) -> None:
        raise NotImplementedError  # the servicer's serving check

    async def LoadAdapter(
        self, request: inference_service_pb2.LoadAdapterRequest, context: Context
    ) -> inference_service_pb2.LoadAdapterResponse:
        """Checks a local PEFT folder and loads it under a name."""
        async with self._failures(context):
            self._check_ready()
            loaded = await self.adapters.load(request.name, request.path)
            return inference_service_pb2.LoadAdapterResponse(adapter=loaded.to_proto())
        raise AssertionError("unreachable: a failure aborts the call")

    async def UnloadAdapter(
        self, request: inference_service_pb2.UnloadAdapterRequest, context: Context
    ) -> inference_service_pb2.UnloadAdapterResponse:
        """Unloads an adapter no generation uses."""
        async with self._failures(context):
            self._check_ready()
            unloaded = await self.adapters.unload(request.name)
            return inference_service_pb2.UnloadAdapterResponse(adapter=unloaded.to_proto())
        raise AssertionError("unreachable: a failure aborts the call")

    async def ListAdapters(
        self, request: inference_service_pb2.ListAdaptersRequest, context: Context
    ) -> inference_service_pb2.ListAdaptersResponse:
        """The loaded adapters and the LoRA limits."""
        async with self._failures(context):
            enabled = self.adapters.enabled
            return inference_service_pb2.ListAdaptersResponse(
                adapters=[a.to_proto() for a in self.adapters.listed()],
                lora_enabled=enabled,
                max_adapters=self.adapters.max_adapters if enabled else 0,
                max_rank=self.adapters.max_rank if enabled else 0,
            )
        raise AssertionError("unreachable: a failure aborts the call")
