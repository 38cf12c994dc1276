"""Triton itself: the embedded server's launcher (``server``) and the per-version model configurations
(``config``, Triton's protobuf messages). Below the frontend and the exporter, above the core, which
imports neither tritonclient nor protobuf."""
