"""Install the chart with real Helm (helm-sdkpy) against a Kubernetes API emulator on loopback.

Rendered manifests are parsed strictly (a key twice in one mapping is an error), and every object is
validated with kubernetes-validate --strict against the oldest Kubernetes the chart supports (its
kubeVersion) and the newest kubernetes-validate knows; the tests then check what a GPU or CPU cluster,
and the optional parts, get.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_sdkpy import Configuration
from helm_sdkpy.actions import Install, Upgrade
from helm_sdkpy.exceptions import HelmError

from tests.integration.kube_emulator import KubeEmulator

CHART = Path(__file__).resolve().parents[2] / "charts" / "podlatency"
OLDEST_KUBERNETES = "1.30.0"  # the chart's kubeVersion: lifecycle.preStop.sleep
NEWEST_KUBERNETES = max(kubernetes_validate.utils.all_versions(), key=lambda v: tuple(map(int, v.split("."))))
# Custom resources have no schema in kubernetes-validate; they are checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}


def scenario(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text())
    return values


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {key for key in keys if keys.count(key) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"keys repeated in one mapping: {sorted(map(str, repeated))}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def strict_documents(manifest: str) -> list[dict[str, Any]]:
    """The objects of a rendered manifest, parsed strictly."""
    return [doc for doc in yaml.load_all(manifest, Loader=StrictLoader) if doc]


def install(
    cluster: KubeEmulator, values: dict[str, Any], release_name: str = "pl", namespace: str = "default"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Install as release ``release_name`` and return the rendered objects and hook objects."""
    config = Configuration(namespace=namespace, kubeconfig=str(cluster.kubeconfig))
    installer = Install(config)
    release = asyncio.run(installer.run(release_name, str(CHART), values=values, wait=False, timeout=60))
    objects = strict_documents(release["manifest"])
    hooks = [doc for hook in release.get("hooks") or [] for doc in strict_documents(hook["manifest"])]
    return objects, hooks


def upgrade(cluster: KubeEmulator, release_name: str = "pl", namespace: str = "default") -> int:
    """``helm upgrade --reuse-values`` of an installed release; returns the new revision.

    Helm creates what the release renders and the cluster lacks (a deleted object) and leaves alone
    what it never rendered (a ConfigMap's ``data`` written since).
    """
    config = Configuration(namespace=namespace, kubeconfig=str(cluster.kubeconfig))
    release = asyncio.run(
        Upgrade(config).run(release_name, str(CHART), values={}, wait=False, timeout=60, reuse_values=True)
    )
    return int(release["version"])


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def predictor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [
        obj
        for obj in by_kind(objects, "Deployment")
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "predictor"
    ]
    return deployment


def validate_all(objects: list[dict[str, Any]]) -> None:
    for version in (OLDEST_KUBERNETES, NEWEST_KUBERNETES):
        for obj in objects:
            if obj["kind"] not in CUSTOM_KINDS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_default_install_schedules_onto_gpu_nodes_without_claiming_a_gpu(cluster: KubeEmulator) -> None:
    """By default predictors go onto GPU nodes (selector, taint toleration) but claim no GPU.

    They predict on the CPU: a router's calls are below gpuMinRows. All objects validate.
    """
    objects, hooks = install(cluster, {})
    validate_all(objects + hooks)
    pod = predictor(objects)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "runtimeClassName" not in pod
    config = by_kind(objects, "ConfigMap")[0]["data"]
    assert config["PODLATENCY_DEVICE"] == "cpu"
    assert config["PODLATENCY_MAX_IN_FLIGHT"] == "32"
    assert config["PODLATENCY_MAX_BODY_BYTES"] == "8388608"
    assert cluster.emulator is not None
    assert cluster.emulator.release_writes >= 1, "Helm recorded its release"


def test_cpu_values_turn_gpu_scheduling_off(cluster: KubeEmulator) -> None:
    """ci/cpu-values.yaml drops the GPU node selector and toleration, and predicts on the CPU."""
    objects, hooks = install(cluster, scenario("cpu-values.yaml"))
    validate_all(objects + hooks)
    pod = predictor(objects)["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    assert by_kind(objects, "ConfigMap")[0]["data"]["PODLATENCY_DEVICE"] == "cpu"


def test_probes_security_and_service(cluster: KubeEmulator) -> None:
    """Probes and a restricted security context are set, and the Service selects the predictor pods."""
    objects, hooks = install(cluster, {})
    deployment = predictor(objects)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is True, "predictors watch the rollout ConfigMap"
    [service] = [
        s for s in by_kind(objects, "Service") if s["metadata"]["name"] == deployment["metadata"]["name"]
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [hook["metadata"]["annotations"]["helm.sh/hook"] for hook in hooks] == ["test"]


def test_optional_parts_appear_only_when_enabled(cluster: KubeEmulator) -> None:
    """Jaeger, Locust, HPA, ServiceMonitor and NetworkPolicy exist only with their switches on."""
    plain, _ = install(cluster, {})
    kinds = {obj["kind"] for obj in plain}
    assert not kinds & {"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"}
    assert not [
        obj for obj in plain if "jaeger" in obj["metadata"]["name"] or "locust" in obj["metadata"]["name"]
    ]
    assert settings_of(plain)["PODLATENCY_EXTENSIONS"] == "", "the seed designs are off"


def test_everything_on(cluster: KubeEmulator) -> None:
    """With ci/full-values.yaml, Jaeger receives the traces and Locust targets the predictor; all validate."""
    objects, hooks = install(cluster, scenario("full-values.yaml"))
    validate_all(objects + hooks)
    names = {obj["metadata"]["name"] for obj in objects}
    assert {
        "pl-podlatency-jaeger",
        "pl-podlatency-locust",
        "pl-podlatency-locust-master",
        "pl-podlatency-locust-worker",
    } <= names
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"} <= {obj["kind"] for obj in objects}
    config = by_kind(objects, "ConfigMap")[0]["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://pl-podlatency-jaeger:4318"
    head_share = (config["OTEL_TRACES_SAMPLER"], config["OTEL_TRACES_SAMPLER_ARG"])
    assert head_share == ("parentbased_traceidratio", "0.01"), "a 1% head share"
    assert config["PODLATENCY_TRACE_SLOW_MS"] == "auto"
    master = next(obj for obj in objects if obj["metadata"]["name"] == "pl-podlatency-locust-master")
    args = master["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--host=http://pl-podlatency:80" in args
    assert args[args.index("-f") + 1] == "/app/measure/loadtest/locustfile.py", "where the image copies it"
    assert settings_of(objects)["PODLATENCY_EXTENSIONS"] == "measure.seed_designs:extension"
    trainer_env = env_of(named(objects, "Deployment", "pl-podlatency-trainer"))
    assert trainer_env["PODLATENCY_EXTENSIONS"] == "", "trainers serve no predictions, so no seed designs"
    assert "replicas" not in predictor(objects)["spec"], "the autoscaler owns the replica count"


def test_schema_refuses_bad_values(cluster: KubeEmulator) -> None:
    """Installing with replicaCount "two" (or an unknown sampler) is refused by values.schema.json first."""
    with pytest.raises(HelmError):
        install(cluster, {"replicaCount": "two"})
    with pytest.raises(HelmError):
        install(cluster, {"tracing": {"sampler": "sometimes"}})
    with pytest.raises(HelmError):
        install(cluster, {"tracing": {"slowMs": "fast"}})
    assert cluster.emulator is not None
    assert not list(cluster.emulator.objects)


def settings_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The predictors' PODLATENCY_* settings: the release's settings ConfigMap."""
    [settings] = [
        obj for obj in by_kind(objects, "ConfigMap") if "PODLATENCY_MODEL_DIR" in obj.get("data", {})
    ]
    data: dict[str, str] = settings["data"]
    return data


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"] == name]
    return obj


def test_trainers_roll_models_out_with_least_privilege(cluster: KubeEmulator) -> None:
    """By default two leader-elected trainers publish through a release-owned ConfigMap.

    Predictors follow it; the trainer Service selects every trainer (a standby forwards samples to
    the leader); each role's Role grants just what its loops call, on the named ConfigMap and Lease
    where RBAC allows names, and nothing on pods.
    """
    objects, hooks = install(cluster, {})
    validate_all(objects + hooks)
    trainer = named(objects, "Deployment", "pl-podlatency-trainer")
    assert trainer["spec"]["replicas"] == 2
    pod = trainer["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["serve", "--role", "trainer", "--device", "cpu"]
    assert "nvidia.com/gpu" not in str(pod)
    assert pod["volumes"][0] == {"name": "models", "emptyDir": {}}
    trainer_env = env_of(trainer)
    assert trainer_env["PODLATENCY_ROLLOUT_CONFIGMAP"] == "pl-podlatency-model"
    assert trainer_env["PODLATENCY_PUBLISH_URL"] == "http://$(POD_IP):8000"
    assert trainer_env["PODLATENCY_POD_NAME"] == "$(POD_NAME)"
    assert trainer_env["PODLATENCY_LEASE_DURATION_S"] == "15"
    predictor_env = env_of(predictor(objects))
    assert predictor_env["PODLATENCY_ROLE"] == "predictor"
    assert predictor_env["PODLATENCY_ROLLOUT_CONFIGMAP"] == "pl-podlatency-model"
    service = named(objects, "Service", "pl-podlatency-trainer")
    assert service["spec"]["selector"] == trainer["spec"]["selector"]["matchLabels"]
    assert "data" not in named(objects, "ConfigMap", "pl-podlatency-model"), "Helm never sets the version"

    predictor_rules = named(objects, "Role", "pl-podlatency-predictor")["rules"]
    assert predictor_rules == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["pl-podlatency-model"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    trainer_rules = named(objects, "Role", "pl-podlatency-trainer")["rules"]
    granted = {(rule["resources"][0], verb) for rule in trainer_rules for verb in rule["verbs"]}
    assert granted == {
        ("configmaps", "get"), ("configmaps", "list"), ("configmaps", "watch"), ("configmaps", "update"),
        ("leases", "get"), ("leases", "update"), ("leases", "create"), ("events", "create"),
    }  # fmt: skip
    assert not [rule for rule in trainer_rules + predictor_rules if "pods" in rule["resources"]]
    named_rules = [
        rule for rule in trainer_rules if rule["resources"] != ["events"] and "create" not in rule["verbs"]
    ]
    assert all("resourceNames" in rule for rule in named_rules)
    binding = named(objects, "RoleBinding", "pl-podlatency-trainer")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == "pl-podlatency-trainer"


def test_trainer_storage_and_switching_trainers_off(cluster: KubeEmulator) -> None:
    """Persistence mounts one shared claim in every trainer; without trainers nothing of them is left."""
    objects, _ = install(cluster, {"trainer": {"persistence": {"enabled": True, "storageClassName": "nfs"}}})
    validate_all(objects)
    claim = named(objects, "PersistentVolumeClaim", "pl-podlatency-trainer")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    volumes = named(objects, "Deployment", "pl-podlatency-trainer")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "models", "persistentVolumeClaim": {"claimName": "pl-podlatency-trainer"}}
    single_node_volume = {"persistence": {"enabled": True, "accessModes": ["ReadWriteOnce"]}}
    with pytest.raises(HelmError, match="ReadWriteMany"):  # a new release: Helm refuses to reuse "pl"
        install(cluster, {"trainer": single_node_volume}, release_name="single")

    fresh = cluster.kubeconfig.parent / "fresh-cluster"
    fresh.mkdir()
    with KubeEmulator(fresh) as other:
        objects, _ = install(other, {"trainer": {"enabled": False}})
    assert not [obj for obj in objects if "trainer" in obj["metadata"]["name"]]
    assert not by_kind(objects, "Role")
    pod = predictor(objects)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert env_of(predictor(objects))["PODLATENCY_ROLE"] == "both"
    assert "PODLATENCY_ROLLOUT_CONFIGMAP" not in env_of(predictor(objects))


def test_write_routes_get_a_generated_token_and_pods_drain(cluster: KubeEmulator) -> None:
    """By default a Secret with a random token guards the write routes; pods drain before stopping."""
    objects, _ = install(cluster, {})
    secret = named(objects, "Secret", "pl-podlatency-api-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 40
    assert token.isalnum()
    reference = {"secretKeyRef": {"name": "pl-podlatency-api-token", "key": "token"}}
    for deployment in (predictor(objects), named(objects, "Deployment", "pl-podlatency-trainer")):
        assert env_of(deployment)["PODLATENCY_API_TOKEN"] == reference
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
        assert pod["terminationGracePeriodSeconds"] == 30
    assert token not in yaml.safe_dump(predictor(objects))

    fresh = cluster.kubeconfig.parent / "fresh-cluster"
    fresh.mkdir()
    with KubeEmulator(fresh) as other:
        objects, _ = install(other, {"auth": {"existingSecret": "router-token", "secretKey": "bearer"}})
    assert not by_kind(objects, "Secret")
    assert env_of(predictor(objects))["PODLATENCY_API_TOKEN"] == {
        "secretKeyRef": {"name": "router-token", "key": "bearer"}
    }


def test_the_objective_is_set_once_for_predictors_and_trainers(cluster: KubeEmulator) -> None:
    """podlatency.objective, quantileAlpha, quantiles (and the router's tokenless samples) reach every pod.

    They come through the one ConfigMap predictors and trainers read; a quantile outside (0, 1) is refused.
    """
    with pytest.raises(HelmError):
        install(cluster, {"podlatency": {"objective": "median"}})
    with pytest.raises(HelmError, match="quantiles"):
        install(cluster, {"podlatency": {"quantiles": [0.5, 99]}})
    assert cluster.emulator is not None
    assert not list(cluster.emulator.objects), "the schema refused it before anything was created"
    values = {
        "podlatency": {"objective": "quantile", "quantileAlpha": 0.95, "quantiles": [0.5, 0.99]},
        "auth": {"routerSamplesWithoutToken": True},
    }
    objects, _ = install(cluster, values)
    settings = named(objects, "ConfigMap", "pl-podlatency")["data"]
    assert (settings["PODLATENCY_OBJECTIVE"], settings["PODLATENCY_QUANTILE_ALPHA"]) == ("quantile", "0.95")
    assert settings["PODLATENCY_QUANTILES"] == "0.5,0.99"
    assert settings["PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN"] == "true"  # noqa: S105  (a flag, not a secret)
    for deployment in (predictor(objects), named(objects, "Deployment", "pl-podlatency-trainer")):
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "pl-podlatency"}} in sources
