"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) and gRPC's health
service; needs the ``grpc`` extra (grpcio, protobuf)."""

from loadonce.protocols.grpc.server import GrpcBindError, GrpcServer, grpc_lifespan
from loadonce.protocols.grpc.service import InferenceService, grpc_code

__all__ = ["GrpcBindError", "GrpcServer", "InferenceService", "grpc_code", "grpc_lifespan"]
