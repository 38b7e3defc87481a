"""What a platform team expects of the chart: images that exist, GPU claims, drains, spreading, versions.

Installed with real Helm against the Kubernetes API emulator (see test_chart_install.py); there is no
Docker engine or real cluster here, so the image reference is checked against what the release
workflow would publish rather than pulled.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_sdkpy.exceptions import HelmError

from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import (
    CHART,
    OLDEST_KUBERNETES,
    env_of,
    install,
    named,
    predictor,
    scenario,
    strict_documents,
    validate_all,
)

WORKFLOW = CHART.parents[1] / ".github" / "workflows" / "image.yml"


def published_images(owner: str, tag: str) -> dict[str, str]:
    """The image references ``.github/workflows/image.yml`` pushes for a git tag, by flavour."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["build"]
    push_step = next(step for step in job["steps"] if "build-push-action" in step.get("uses", ""))
    assert push_step["with"]["push"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    template: str = push_step["with"]["tags"]
    images = {}
    for flavor in job["strategy"]["matrix"]["flavor"]:
        image = template
        for expression, value in (
            ("github.repository_owner", owner), ("github.ref_name", tag), ("matrix.flavor", flavor)
        ):  # fmt: skip
            image = image.replace("${{ " + expression + " }}", value)
        assert "${{" not in image, image
        images[flavor] = image
    return images


def image_of(objects: list[dict[str, Any]]) -> str:
    image: str = predictor(objects)["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


def test_the_default_image_is_the_one_the_release_workflow_publishes(cluster: KubeEmulator) -> None:
    """For the chart's appVersion, the rendered image is what image.yml pushes on tag v<appVersion>.

    The CPU variant by default; the cuda variant when a GPU is claimed; image.tag overrides both.
    """
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    owner = repository.split("/")[1]
    images = published_images(owner, f"v{chart['appVersion']}")
    assert set(images) == {"cpu", "cuda"}
    objects, _ = install(cluster, {})
    assert image_of(objects) == images["cpu"]
    trainer = named(objects, "Deployment", "pl-podlatency-trainer")
    assert trainer["spec"]["template"]["spec"]["containers"][0]["image"] == images["cpu"]

    fresh = cluster.kubeconfig.parent / "gpu"
    fresh.mkdir()
    with KubeEmulator(fresh) as other:
        objects, _ = install(other, {"gpu": {"enabled": True}})
    assert image_of(objects) == images["cuda"]
    fresh = cluster.kubeconfig.parent / "own"
    fresh.mkdir()
    with KubeEmulator(fresh) as other:
        objects, _ = install(other, {"image": {"repository": "registry.example/podlatency", "tag": "dev"}})
    assert image_of(objects) == "registry.example/podlatency:dev"


def test_make_image_builds_the_tags_the_chart_renders(cluster: KubeEmulator) -> None:
    """`make image IMAGE=<repository>` tags both variants as the chart names them for that repository.

    With ``IMAGE_VARIANTS=cpu`` it builds the CPU variant alone.

    There is no Docker engine here: Make prints the commands it would run (``make -n``), and those are
    checked, build arguments included.
    """
    repository = "registry.example/team/podlatency"
    printed = subprocess.run(
        ["make", "-n", "image", f"IMAGE={repository}"],
        capture_output=True, text=True, check=True, cwd=CHART.parents[1],
    ).stdout.splitlines()  # fmt: skip
    commands = [line for line in printed if line.startswith("docker build")]
    builds = {line.rsplit(" -t ", 1)[1].split()[0]: line for line in commands}
    objects, _ = install(cluster, {"image": {"repository": repository}, "gpu": {"enabled": True}})
    cuda = image_of(objects)
    cpu = cuda.removesuffix("-cuda") + "-cpu"
    assert set(builds) == {cpu, cuda}
    assert "WITH_CUPY=true" in builds[cuda]
    assert "WITH_CUPY=false" in builds[cpu]
    cpu_only = subprocess.run(
        ["make", "-n", "image", f"IMAGE={repository}", "IMAGE_VARIANTS=cpu"],
        capture_output=True, text=True, check=True, cwd=CHART.parents[1],
    ).stdout.splitlines()  # fmt: skip
    assert [line for line in cpu_only if line.startswith("docker build")] == [builds[cpu]]


def test_a_gpu_is_claimed_only_when_enabled_under_the_resource_name_given(cluster: KubeEmulator) -> None:
    """gpu.enabled claims gpu.resourceName (a time-sliced share here) and predicts on cuda."""
    objects, hooks = install(cluster, scenario("full-values.yaml"))
    validate_all(objects + hooks)
    pod = predictor(objects)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu.shared"] == 1
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert pod["runtimeClassName"] == "nvidia"
    assert named(objects, "ConfigMap", "pl-podlatency")["data"]["PODLATENCY_DEVICE"] == "cuda"
    trainer = named(objects, "Deployment", "pl-podlatency-trainer")["spec"]["template"]["spec"]
    assert "nvidia.com" not in str(trainer["containers"][0]["resources"]), "trainers train on the CPU"


def test_cuda_without_a_gpu_claim_is_refused(cluster: KubeEmulator) -> None:
    """podlatency.device=cuda with no GPU claimed would crash in every pod: Helm refuses it, saying why."""
    with pytest.raises(HelmError, match=r"gpu\.enabled"):
        install(cluster, {"podlatency": {"device": "cuda"}})


def test_a_failed_start_shows_its_reason(cluster: KubeEmulator) -> None:
    """Predictors and trainers report their last log lines as the termination message when they fail.

    So `serve` exiting at once on `device cuda` without a GPU ("no usable GPU", tested in test_cli)
    shows in `kubectl describe pod`, not only in the logs of a crash loop.
    """
    objects, _ = install(cluster, {})
    for deployment in (predictor(objects), named(objects, "Deployment", "pl-podlatency-trainer")):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_drains_proceed_at_any_replica_count(cluster: KubeEmulator) -> None:
    """The PodDisruptionBudget lets one predictor go at a time, so even one replica can be drained."""
    objects, _ = install(cluster, scenario("cpu-values.yaml"))
    assert predictor(objects)["spec"]["replicas"] == 1
    budget = named(objects, "PodDisruptionBudget", "pl-podlatency")
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": predictor(objects)["spec"]["selector"]["matchLabels"]},
    }


def test_replicas_spread_across_nodes_with_a_priority(cluster: KubeEmulator) -> None:
    """Predictors and trainers spread over nodes by their own labels; both take a priorityClassName."""
    values = {"priorityClassName": "latency-critical", "trainer": {"priorityClassName": "batch"}}
    objects, _ = install(cluster, values)
    validate_all(objects)
    for name, priority in (("pl-podlatency", "latency-critical"), ("pl-podlatency-trainer", "batch")):
        deployment = named(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["priorityClassName"] == priority
        [spread] = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_trainers_take_extra_environment(cluster: KubeEmulator) -> None:
    """trainer.extraEnv reaches the trainer container, after the chart's own variables (so it wins)."""
    extra = [{"name": "PODLATENCY_LOG_LEVEL", "value": "debug"}, {"name": "PODLATENCY_WORKERS", "value": "1"}]
    objects, _ = install(cluster, {"trainer": {"extraEnv": extra}})
    trainer = named(objects, "Deployment", "pl-podlatency-trainer")
    assert env_of(trainer)["PODLATENCY_LOG_LEVEL"] == "debug"
    names = [item["name"] for item in trainer["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names[-2:] == ["PODLATENCY_LOG_LEVEL", "PODLATENCY_WORKERS"]


def test_pod_labels_are_rendered_once(cluster: KubeEmulator) -> None:
    """Every manifest parses strictly (no key twice in a mapping), and the parser does refuse repeats."""
    with pytest.raises(yaml.constructor.ConstructorError, match="repeated"):
        strict_documents("metadata:\n  labels:\n    a: 1\n    a: 1\n")
    objects, _ = install(cluster, scenario("full-values.yaml"))  # install() parses strictly
    labels = predictor(objects)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "podlatency"
    assert labels["app.kubernetes.io/component"] == "predictor"


def test_kubernetes_older_than_the_charts_kube_version_is_refused(tmp_path: Path) -> None:
    """The chart declares kubeVersion >= 1.30 (it uses lifecycle.preStop.sleep): Helm refuses 1.29."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    too_old = KubeEmulator(tmp_path, kubernetes_version="1.29.8")
    with too_old, pytest.raises(HelmError, match="kubeVersion"):
        install(too_old, {})
    oldest = tmp_path / "oldest"
    oldest.mkdir()
    with KubeEmulator(oldest, kubernetes_version=OLDEST_KUBERNETES) as supported:
        objects, _ = install(supported, {})
    assert predictor(objects)["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]


def test_every_trainer_is_scraped_and_prometheus_may_reach_metrics(cluster: KubeEmulator) -> None:
    """With serviceMonitor on, a second ServiceMonitor scrapes every trainer through a headless Service.

    With networkPolicy on, metricsFrom (the namespace "monitoring" by default) may reach both roles.
    """
    objects, _ = install(cluster, scenario("full-values.yaml"))
    validate_all(objects)
    monitors = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"pl-podlatency", "pl-podlatency-trainer"}
    metrics_service = named(objects, "Service", "pl-podlatency-trainer-metrics")
    assert metrics_service["spec"]["clusterIP"] == "None"
    trainer = named(objects, "Deployment", "pl-podlatency-trainer")
    assert metrics_service["spec"]["selector"] == trainer["spec"]["selector"]["matchLabels"]
    assert "podlatency.io/leader" not in metrics_service["spec"]["selector"], "standbys are scraped too"
    for monitor in monitors.values():
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            service["metadata"]["name"]
            for service in objects
            if service["kind"] == "Service" and wanted.items() <= service["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, (monitor["metadata"]["name"], selected)
        assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]

    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    for policy in (obj for obj in objects if obj["kind"] == "NetworkPolicy"):
        assert prometheus in policy["spec"]["ingress"][0]["from"], policy["metadata"]["name"]
