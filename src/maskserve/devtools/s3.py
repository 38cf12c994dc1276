"""A real S3-compatible server for tests and benchmarks: moto's standalone server, in its own process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

from maskserve.triton.server import free_port


class S3Server:
    """A real S3-compatible HTTP server in its own process: moto's standalone server.

    (MinIO, the more faithful choice, is not installable from the package
    registries here; moto speaks the S3 REST API with SigV4 clients, multipart
    uploads, lifecycle configurations and presigned URLs, but does not enforce
    a presigned URL's signature or expiry.)
    """

    ACCESS_KEY = "maskserve-test"
    SECRET_KEY = "maskserve-test-secret"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("the S3 server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def settings(self, bucket: str, **more: Any) -> dict[str, Any]:
        """The frontend settings that put its output files in ``bucket`` on this server."""
        return {
            "files_backend": "s3",
            "s3_endpoint_url": self.url,
            "s3_bucket": bucket,
            "s3_access_key_id": self.ACCESS_KEY,
            "s3_secret_access_key": self.SECRET_KEY,
            **more,
        }
