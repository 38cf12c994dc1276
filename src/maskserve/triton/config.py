"""Reading and writing a Triton model's ``config.pbtxt`` (an operator editing a version's settings, the tests).

Every version of a model is a Triton model of its own (``signatures.served_name``)
with its own ``config.pbtxt``, so nothing here composes one configuration out of
several: a version's file is exactly what Triton runs it with.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = Any  # tritonclient's generated ``model_config_pb2.ModelConfig`` (untyped)


def parse(text: str) -> ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def render(config: ModelConfig) -> str:
    return text_format.MessageToString(config)
