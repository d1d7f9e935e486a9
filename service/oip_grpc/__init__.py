"""Stubs for the Open Inference Protocol's gRPC service, generated from ``open_inference_grpc.proto`` and
checked in (see README.md here for the command and why)."""
