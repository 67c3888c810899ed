"""Prometheus metrics of the server, in a registry of its own, fed by the service (requests)
and by the engine through the EngineObserver interface (queue, batches, masks, tokens)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from submodel.server.api import EngineObserver

# Latency buckets from a fast CPU step (~10 ms) to a long completion (minutes).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STEP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
UNROUTED = "none"  # language and route_source of a request rejected before routing
GRPC, HTTP = "grpc", "http"  # the `protocol` label: which API a request came by


class Metrics(EngineObserver):
    """Every metric DESIGN.md names. Pass it to the Engine as its observer."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "submodel_requests_total", "Finished generation requests by routed language, "
            "route source, status (the gRPC code's name: ok, invalid_argument, cancelled, ... "
            "for HTTP too) and protocol (grpc, http).",
            ["language", "route_source", "status", "protocol"], registry=r)
        self.request_duration = Histogram(
            "submodel_request_duration_seconds", "Generation request wall time, receipt to "
            "last token.", ["language", "protocol"], buckets=SECONDS, registry=r)
        self.ttft = Histogram(
            "submodel_time_to_first_token_seconds", "Submission to the first generated token.",
            ["language"], buckets=SECONDS, registry=r)
        self.inter_token = Histogram(
            "submodel_inter_token_latency_seconds", "Time between consecutive tokens of a "
            "sample (one decode step).", buckets=STEP_SECONDS, registry=r)
        self.generated_tokens = Counter(
            "submodel_generated_tokens_total", "Generated tokens, all samples.", ["language"],
            registry=r)
        self.prompt_tokens = Counter(
            "submodel_prompt_tokens_total", "Prompt tokens of admitted requests.", ["language"],
            registry=r)
        self.queue = Gauge(
            "submodel_queue_depth", "Requests waiting for a batch slot.", ["language"],
            registry=r)
        self.batch = Histogram(
            "submodel_batch_size", "Sequences in each decode step.", buckets=BATCH, registry=r)
        self.mask_switches = Counter(
            "submodel_mask_switches_total", "Changes of the active language mask.", registry=r)
        self.mask_switch_seconds = Histogram(
            "submodel_mask_switch_seconds", "Time to change the active mask.",
            buckets=STEP_SECONDS, registry=r)
        self.weights = Gauge(
            "submodel_weight_bytes", "Resident bytes of model weights: dense, masks, extra "
            "(anything a strategy keeps beyond them).", ["kind"], registry=r)
        self.sub_model_count = Gauge(
            "submodel_sub_models", "Language sub-models served (dense not counted); changes "
            "on a reload.", registry=r)
        self.reloads = Counter(
            "submodel_reloads_total", "Reloads of the sub-model set (SIGHUP or the "
            "ReloadSubModels RPC) by result: ok, or refused (the old set kept serving).",
            ["result"], registry=r)
        self.prefix_lookup_tokens = Counter(
            "submodel_prefix_cache_lookup_tokens_total", "Prompt tokens looked up in the prefix "
            "cache (serve --prefix-cache-mb).", ["language"], registry=r)
        self.prefix_hit_tokens = Counter(
            "submodel_prefix_cache_hit_tokens_total", "Prompt tokens whose keys and values came "
            "from the prefix cache instead of a prefill.", ["language"], registry=r)
        self.prefix_bytes = Gauge(
            "submodel_prefix_cache_bytes", "Bytes held by the prefix cache.", registry=r)
        self.router_confidence = Histogram(
            "submodel_router_confidence", "Confidence of each routing decision.",
            buckets=CONFIDENCE, registry=r)

    # EngineObserver: called from the engine's thread (prometheus-client is thread-safe).
    def queue_depth(self, language: str, depth: int) -> None:
        self.queue.labels(language).set(depth)

    def batch_size(self, size: int) -> None:
        self.batch.observe(size)

    def mask_switch(self, seconds: float) -> None:
        self.mask_switches.inc()
        self.mask_switch_seconds.observe(seconds)

    def token_latency(self, seconds: float) -> None:
        self.inter_token.observe(seconds)

    def weight_bytes(self, kind: str, nbytes: int) -> None:
        self.weights.labels(kind).set(nbytes)

    def prefix_cache_lookup(self, language: str, prompt_tokens: int, hit_tokens: int) -> None:
        self.prefix_lookup_tokens.labels(language).inc(prompt_tokens)
        self.prefix_hit_tokens.labels(language).inc(hit_tokens)

    def prefix_cache_bytes(self, nbytes: int) -> None:
        self.prefix_bytes.set(nbytes)

    # Service side.
    def sub_models(self, count: int) -> None:
        self.sub_model_count.set(count)

    def reloaded(self, result: str) -> None:
        """A reload ended with `result`: ok, or refused."""
        self.reloads.labels(result).inc()

    def routed(self, confidence: float) -> None:
        self.router_confidence.observe(confidence)

    def admitted(self, language: str, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(language).inc(prompt_tokens)

    def first_token(self, language: str, seconds: float) -> None:
        self.ttft.labels(language).observe(seconds)

    def generated(self, language: str, tokens: int) -> None:
        self.generated_tokens.labels(language).inc(tokens)

    def finished(self, language: str, route_source: str, status: str, protocol: str,
                 seconds: float | None = None) -> None:
        """One request done; `status` is the gRPC code's name in lower case."""
        self.requests.labels(language, route_source, status, protocol).inc()
        if seconds is not None:
            self.request_duration.labels(language, protocol).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve_http(self, host: str, port: int):
        """Start GET /metrics on a daemon thread; returns the HTTP server (`.server_port`,
        `.shutdown()`)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
