"""Model backends: one small interface, an ONNX Runtime and a CoreML implementation."""

from kwsd.backends.base import Backend, ChunkSpec, EncoderState, ModelDefaults

__all__ = ["Backend", "ChunkSpec", "EncoderState", "ModelDefaults"]
