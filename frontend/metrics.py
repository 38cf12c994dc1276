"""Prometheus metrics of the frontend, and the event-loop lag monitor.

Each app has its own registry (tests run several apps in one process). The
lag monitor wakes every ``interval`` seconds and records how late it woke: a
blocked event loop shows up there before it shows up anywhere else.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
IOU_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "maskserve_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "maskserve_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.credits = Counter("maskserve_credits_charged", "Credits charged for completed images", registry=r)
        self.images = Counter("maskserve_images", "Images processed by outcome", ["kind", "status"], registry=r)
        self.encodes = Counter(
            "maskserve_model_tier_encodes",
            "Prompts by whether the model tier had to receive and encode the image (yes) or held it (no)",
            ["encoded"],
            registry=r,
        )
        self.database_unavailable = Counter(
            "maskserve_database_unavailable", "Requests answered 503 because the database was unavailable", registry=r
        )
        self.settlements = Counter(
            "maskserve_settlements",
            "Journal entries settled after a database fault, by outcome (refunded, revoked, kept, released)",
            ["outcome"],
            registry=r,
        )
        self.wire = Counter(
            "maskserve_model_tier_bytes",
            "Tensor payload bytes exchanged with the model tier",
            ["direction"],
            registry=r,
        )
        self.triton = Histogram(
            "maskserve_triton_call_seconds",
            "Triton call latency by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.version_requests = Counter(
            "maskserve_model_version_requests",
            "Images that ran a model, by the version that served them and their outcome",
            ["version", "status"],
            registry=r,
        )
        self.version_latency = Histogram(
            "maskserve_model_version_seconds",
            "Processing time of images that ran a model, by version",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow = Counter(
            "maskserve_shadow_requests",
            "Shadowed prompts by candidate version and outcome (compared, error, skipped)",
            ["candidate", "outcome"],
            registry=r,
        )
        self.shadow_iou = Histogram(
            "maskserve_shadow_iou",
            "Binary-mask IoU between the candidate's mask and the served one",
            ["candidate", "baseline"],
            buckets=IOU_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "maskserve_rejected", "Requests refused before work (rate limit, overload)", ["reason"], registry=r
        )
        self.loop_lag = Histogram(
            "maskserve_event_loop_lag_seconds", "How late the event loop ran a timer", buckets=LAG_BUCKETS, registry=r
        )
        self.loop_lag_max = Gauge("maskserve_event_loop_lag_max_seconds", "Largest event-loop lag seen", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def monitor_loop_lag(metrics: Metrics, interval: float = 0.02) -> None:
    worst = 0.0
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval)
        lag = max(0.0, time.perf_counter() - started - interval)
        metrics.loop_lag.observe(lag)
        if lag > worst:
            worst = lag
            metrics.loop_lag_max.set(worst)
