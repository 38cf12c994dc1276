"""The bottom layer: tensor signatures, prompt packing, mask selection, per-version model configurations.

Shared by the exporter (which names the ONNX tensors from here) and the
server (which packs prompts and picks masks the same way); it imports nothing
else of maskserve.
"""
