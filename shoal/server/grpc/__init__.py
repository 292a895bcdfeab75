"""KServe v2 gRPC (`inference.GRPCInferenceService`) beside HTTP, over the same runtime.

The stubs are the ones `tritonclient` ships (generated from Triton's `grpc_service.proto`, a superset
of the KServe v2 proto with the repository calls), never hand-written.
"""
