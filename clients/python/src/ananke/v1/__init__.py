"""Generated protobuf and gRPC stubs of the ananke.v1 API (see proto/ananke/v1)."""
