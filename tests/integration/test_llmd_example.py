"""examples/llm-d-router: the router's URLs name the Services our chart renders from the example's values.

Our chart is installed with real Helm against the Kubernetes API emulator, as the example says
(release "podlatency", namespace "podlatency"). llm-d-router's chart is not part of this repository;
its setting names were read in its source (examples/llm-d-router/README.md says which commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import install, named, validate_all

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-d-router"


def service_url(objects: list[dict[str, Any]], name: str, namespace: str) -> str:
    service = named(objects, "Service", name)
    [port] = service["spec"]["ports"]
    return f"http://{name}.{namespace}.svc.cluster.local:{port['port']}"


def test_the_router_example_points_at_the_services_our_chart_renders(cluster: KubeEmulator) -> None:
    """PREDICTION_SERVER_URL is the predictor Service, TRAINING_SERVER_URL the trainer Service.

    The router's observations are taken without a token, the models predict the p90 as the docs
    install them, and the router's EPP pods' label is the one client the NetworkPolicy admits.
    """
    values = yaml.safe_load((EXAMPLE / "podlatency-values.yaml").read_text())
    objects, _ = install(cluster, values, release_name="podlatency", namespace="podlatency")
    validate_all(objects)
    router = yaml.safe_load((EXAMPLE / "router-values.yaml").read_text())["router"]
    env = {item["name"]: item["value"] for item in router["epp"]["env"]}
    assert env["PREDICTION_SERVER_URL"] == service_url(objects, "podlatency", "podlatency")
    assert env["TRAINING_SERVER_URL"] == service_url(objects, "podlatency-trainer", "podlatency")
    assert router["latencyPredictor"]["enabled"] is True, "the router's latency-aware plugins are on"
    assert router["latencyPredictor"]["predictionServers"]["count"] == 0, "no llm-d prediction sidecar"

    settings = named(objects, "ConfigMap", "podlatency")["data"]
    assert settings["PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN"] == "true"  # noqa: S105  (a flag)
    assert (settings["PODLATENCY_OBJECTIVE"], settings["PODLATENCY_QUANTILE_ALPHA"]) == ("quantile", "0.9")
    policy = named(objects, "NetworkPolicy", "podlatency")
    clients = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert clients == {"llm-d-router-gateway": "router-epp"}


def test_the_sidecar_example_swaps_images_and_resources_only() -> None:
    """router-sidecar-values.yaml changes the two images, resources and the uvicorn worker count.

    With it, the sidecars' environment (the chart's, recorded in tests/fixtures) reads as a trainer and a
    predictor following it (tests/unit/test_llmd_settings.py; started as processes in test_llmd_sidecars.py).
    """
    router = yaml.safe_load((EXAMPLE / "router-sidecar-values.yaml").read_text())["router"]
    predictor = router["latencyPredictor"]
    assert set(predictor) == {"enabled", "trainingServer", "predictionServers"}
    assert set(predictor["trainingServer"]) == {"image", "resources"}
    assert set(predictor["predictionServers"]) == {"image", "resources", "config"}
    assert predictor["predictionServers"]["config"] == {"UVICORN_WORKERS": "2"}
    for server in ("trainingServer", "predictionServers"):
        image = predictor[server]["image"]
        assert (image["repository"], set(image)) == ("podlatency", {"registry", "repository", "tag"})
