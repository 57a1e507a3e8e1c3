"""Server reflection, v1 and v1alpha. grpcio-reflection ships only v1alpha,
while grpcurl asks v1 first; the two protocols are identical but for the
package name, so v1 is served by the same servicer with the v1alpha message
classes (same wire format) under a v1 descriptor built from v1alpha's."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds grpc/reflection/v1/reflection.proto to `pool` so clients can describe it."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    source = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(source)
    old = "." + source.package
    source.name = _V1_FILE
    source.package = "grpc.reflection.v1"
    for message in source.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = ".grpc.reflection.v1" + field.type_name[len(old) :]
    for service in source.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, ".grpc.reflection.v1", 1)
            method.output_type = method.output_type.replace(old, ".grpc.reflection.v1", 1)
    source.options.Clear()
    pool.Add(source)


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serves reflection v1 and v1alpha for `service_names` (plus both reflection services)."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
