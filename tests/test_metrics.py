"""The metrics registry: DESIGN.md's names and labels, observer wiring, HTTP exposition that
passes `promtool check metrics`. (Deltas under real traffic: test_service.py.)"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from submodel.server.metrics import Metrics

DESIGN_NAMES = {  # DESIGN.md "Metrics" (+ `protocol`, issue 13): name -> label names
    "submodel_requests_total": {"language", "route_source", "status", "protocol"},
    "submodel_request_duration_seconds": {"language", "protocol"},
    "submodel_time_to_first_token_seconds": {"language"},
    "submodel_inter_token_latency_seconds": set(),
    "submodel_generated_tokens_total": {"language"},
    "submodel_prompt_tokens_total": {"language"},
    "submodel_queue_depth": {"language"},
    "submodel_batch_size": set(),
    "submodel_mask_switches_total": set(),
    "submodel_mask_switch_seconds": set(),
    "submodel_weight_bytes": {"kind"},
    "submodel_router_confidence": set(),
    # sub-models added and removed while serving (DESIGN.md "Beyond one machine")
    "submodel_sub_models": set(),
    "submodel_reloads_total": {"result"},
    # prefix reuse (issue 17)
    "submodel_prefix_cache_lookup_tokens_total": {"language"},
    "submodel_prefix_cache_hit_tokens_total": {"language"},
    "submodel_prefix_cache_bytes": set(),
}


def busy_metrics() -> Metrics:
    """Every metric touched once, as a short run would."""
    m = Metrics()
    m.queue_depth("python", 3)
    m.batch_size(4)
    m.mask_switch(0.012)
    m.token_latency(0.03)
    m.weight_bytes("dense", 1000)
    m.weight_bytes("masks", 125)
    m.routed(0.93)
    m.sub_models(4)
    m.reloaded("ok")
    m.prefix_cache_lookup("python", 1500, 1472)
    m.prefix_cache_bytes(1 << 20)
    m.admitted("python", 17)
    m.first_token("python", 0.2)
    m.generated("python", 5)
    m.finished("python", "content", "ok", "grpc", 1.5)
    m.finished("python", "hint", "ok", "http", 0.5)
    m.finished("none", "none", "invalid_argument", "grpc")
    return m


def sample_names(m: Metrics) -> dict[str, set[str]]:
    """Exposed metric family -> label names of its samples (bucket 'le' removed)."""
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = out.setdefault(name, set())
        for s in family.samples:
            labels |= set(s.labels) - {"le"}
    return out


def test_names_and_labels_are_designs():
    assert sample_names(busy_metrics()) == DESIGN_NAMES


def test_observer_and_service_calls_change_the_right_series():
    m = busy_metrics()
    v = m.registry.get_sample_value
    assert v("submodel_queue_depth", {"language": "python"}) == 3
    m.queue_depth("python", 0)
    assert v("submodel_queue_depth", {"language": "python"}) == 0
    assert v("submodel_batch_size_sum") == 4 and v("submodel_batch_size_count") == 1
    assert v("submodel_batch_size_bucket", {"le": "2.0"}) == 0
    assert v("submodel_batch_size_bucket", {"le": "4.0"}) == 1
    m.mask_switch(0.02)
    assert v("submodel_mask_switches_total") == 2
    assert v("submodel_mask_switch_seconds_sum") == pytest.approx(0.032)
    assert v("submodel_weight_bytes", {"kind": "masks"}) == 125
    assert v("submodel_prompt_tokens_total", {"language": "python"}) == 17
    assert v("submodel_generated_tokens_total", {"language": "python"}) == 5
    assert v("submodel_requests_total", {"language": "python", "route_source": "content",
                                         "status": "ok", "protocol": "grpc"}) == 1
    assert v("submodel_requests_total", {"language": "python", "route_source": "hint",
                                         "status": "ok", "protocol": "http"}) == 1
    assert v("submodel_requests_total", {"language": "none", "route_source": "none",
                                         "status": "invalid_argument", "protocol": "grpc"}) == 1
    # a request rejected before routing has no duration
    for protocol in ("grpc", "http"):
        assert v("submodel_request_duration_seconds_count",
                 {"language": "python", "protocol": protocol}) == 1
    assert v("submodel_request_duration_seconds_count",
             {"language": "none", "protocol": "grpc"}) is None
    assert v("submodel_router_confidence_bucket", {"le": "0.9"}) == 0
    assert v("submodel_router_confidence_bucket", {"le": "0.95"}) == 1


def test_http_endpoint_serves_the_registry():
    m = busy_metrics()
    server = m.serve_http("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
    finally:
        server.shutdown()
    assert 'submodel_prompt_tokens_total{language="python"} 17.0' in body
    assert "python_gc_objects_collected_total" not in body  # our own registry only


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; CI installs it)")
    return path


@pytest.mark.parametrize("state", ["fresh", "busy"])
def test_exposition_passes_promtool(state):
    m = Metrics() if state == "fresh" else busy_metrics()
    r = subprocess.run([promtool(), "check", "metrics"], input=m.exposition(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
