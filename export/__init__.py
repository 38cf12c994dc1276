"""Exports SAM 2 / SAM 2.1 to ONNX and writes the Triton model repository."""
