"""Triton configurations composed from each version's own ``config.pbtxt``.

Triton holds one configuration per model, shared by all its loaded versions.
Every export therefore keeps the configuration it was made with in its version
directory (``<model>/<version>/config.pbtxt``), and whatever loads versions
composes the model's configuration from those files:

* the model-wide fields (backend, batching, instances, queue policy) are the
  ones of the *primary* version: the one being loaded or promoted;
* every version's parameters are added with a ``_v<version>`` suffix, and the
  backends read their own version's parameters first, so two loaded versions
  keep their own runtime, precision, threads, store bound and provenance;
* the primary's parameters are also kept unsuffixed (read by older clients).

The exporter writes the model-level ``config.pbtxt`` (what Triton reads at
start) with the same function, and ``maskserve models`` sends the result as
the load's configuration, so a load never reuses a configuration Triton
already holds from another version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

VERSIONED = re.compile(r"_v\d+$")
ModelConfig = Any  # tritonclient's generated ``model_config_pb2.ModelConfig`` (untyped)


def versioned(key: str, version: int | str) -> str:
    return f"{key}_v{version}"


def parse(text: str) -> ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def render(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def to_json(config: ModelConfig) -> str:
    """The form Triton's load API takes as a configuration override."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def version_config_path(model_dir: Path, version: int | str) -> Path:
    return model_dir / str(version) / "config.pbtxt"


def version_config(model_dir: Path, version: int | str) -> ModelConfig:
    """The configuration ``version`` was exported with.

    Versions exported before each version kept its own file fall back to the
    model-level file (which carries their ``_v<version>`` parameters).
    """
    path = version_config_path(model_dir, version)
    if not path.is_file():
        path = model_dir / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{version_config_path(model_dir, version)} not found: is {model_dir.parent} the repository Triton serves?"
        )
    return parse(path.read_text())


def compose(model_dir: Path, versions: Iterable[int | str], primary: int | str) -> ModelConfig:
    """The model's configuration with ``primary``'s model-wide fields and every version's parameters."""
    config = version_config(model_dir, primary)
    for version in sorted({int(v) for v in versions} | {int(primary)}):
        own = version_config(model_dir, version)
        for key, value in own.parameters.items():
            if VERSIONED.search(key):
                if key.endswith(f"_v{version}") and key not in config.parameters:
                    config.parameters[key].CopyFrom(value)  # a legacy model-level file's entry
                continue
            config.parameters[versioned(key, version)].CopyFrom(value)
    return config


def with_versions(config: ModelConfig, versions: Iterable[int | str]) -> ModelConfig:
    """``config`` serving exactly ``versions`` (a ``specific`` version policy)."""
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(int(v) for v in versions))
    return config
