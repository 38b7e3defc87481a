"""RBAC for the Kubernetes API emulator, as kube-apiserver's authorizer applies it.

A bearer token ``serviceaccount:<namespace>:<name>`` is that ServiceAccount. It may do what the
Roles and ClusterRoles bound to it allow: verbs, API groups, resources and ``resourceNames``, where a
list or watch is named by its ``metadata.name`` field selector and a create never is (so RBAC cannot
limit ``create`` to one name, as on a real API server). Anything else is refused with the 403
kube-apiserver answers, worded as it words it. The token :data:`ADMIN_TOKEN` may do anything (the
tests' own calls), and so may a request with no token (Helm's: client-go sends no bearer token over
plain HTTP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kmock
from kmock._internal import k8s, rendering

ADMIN_TOKEN = "test"  # noqa: S105 (the emulator's own token: no secret)
SERVICE_ACCOUNT_TOKEN = "serviceaccount:"  # noqa: S105 (a token prefix: no secret)
RBAC_GROUP = "rbac.authorization.k8s.io"


def service_account_token(namespace: str, name: str) -> str:
    """The bearer token that authenticates as a ServiceAccount (what its mounted token does in a pod)."""
    return f"{SERVICE_ACCOUNT_TOKEN}{namespace}:{name}"


def name_from_selector(selector: str | None) -> str | None:
    for term in (selector or "").split(","):
        key, _, value = term.partition("=")
        if key.strip() == "metadata.name":
            return value.strip().lstrip("=")
    return None


def _listed(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _rule_allows(rule: dict[str, Any], verb: str, group: str, plural: str, name: str | None) -> bool:
    def covers(key: str, wanted: str) -> bool:
        granted = _listed(rule.get(key))
        return wanted in granted or "*" in granted

    names = _listed(rule.get("resourceNames"))
    return (
        covers("verbs", verb)
        and covers("apiGroups", group)
        and covers("resources", plural)
        and (not names or (name is not None and name in names))
    )


@dataclass(frozen=True, slots=True)
class RbacAuthorizer:
    """RBAC as kube-apiserver's authorizer applies it, over the Roles and bindings the emulator stores.

    ``stored(plural)`` returns the stored objects of one ``rbac.authorization.k8s.io`` resource.
    """

    stored: Callable[[str], list[dict[str, Any]]]

    def allows(
        self,
        account: tuple[str, str],
        *,
        verb: str,
        group: str,
        plural: str,
        namespace: str | None,
        name: str | None,
    ) -> bool:
        """Whether ServiceAccount ``account`` (namespace, name) may ``verb`` that resource."""
        roles = {(r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in self.stored("roles")}
        cluster_roles = {r["metadata"]["name"]: r for r in self.stored("clusterroles")}

        def binds(binding: dict[str, Any]) -> bool:
            home = binding["metadata"].get("namespace")
            return any(
                subject.get("kind") == "ServiceAccount"
                and subject.get("name") == account[1]
                and subject.get("namespace", home) == account[0]
                for subject in binding.get("subjects") or []
            )

        rules: list[dict[str, Any]] = []
        for binding in self.stored("rolebindings"):
            if namespace is None or binding["metadata"].get("namespace") != namespace or not binds(binding):
                continue
            ref = binding.get("roleRef") or {}
            role = (
                roles.get((namespace, ref.get("name")))
                if ref.get("kind") == "Role"
                else cluster_roles.get(ref.get("name"))
            )
            rules += (role or {}).get("rules") or []
        for binding in self.stored("clusterrolebindings"):
            if binds(binding):
                rules += (cluster_roles.get((binding.get("roleRef") or {}).get("name")) or {}).get(
                    "rules"
                ) or []
        return any(_rule_allows(rule, verb, group, plural, name) for rule in rules)


def rbac_verb(request: rendering.Request) -> str:
    """The RBAC verb of a request, as kube-apiserver's RequestInfo derives it."""
    method = str(getattr(request.method, "value", request.method)).upper()
    if method == "GET":
        if request.action == kmock.action.WATCH or request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def refusal_of(
    request: rendering.Request, stored: Callable[[str], list[dict[str, Any]]]
) -> k8s.KubernetesError | None:
    """None when the request's bearer token may make it; else the 401 or 403 to answer."""
    headers = {key.lower(): value for key, value in request.headers.items()}
    token = headers.get("authorization", "").removeprefix("Bearer ").strip()
    if token in (ADMIN_TOKEN, "") or request.resource is None:
        return None  # the admin (Helm's client-go sends no token over plain HTTP); discovery is open
    if not token.startswith(SERVICE_ACCOUNT_TOKEN):
        return k8s.KubernetesError(status=401, reason="Unauthorized", message="Unauthorized")
    namespace, _, account = token.removeprefix(SERVICE_ACCOUNT_TOKEN).partition(":")
    verb = rbac_verb(request)
    name = request.name
    if verb in ("list", "watch") and name is None:
        name = name_from_selector(request.params.get("fieldSelector"))
    group, plural = request.resource.group or "", request.resource.plural or ""
    authorizer = RbacAuthorizer(stored)
    if authorizer.allows(
        (namespace, account),
        verb=verb,
        group=group,
        plural=plural,
        namespace=request.namespace,
        name=name,
    ):
        return None
    subject = f'{plural} "{name}"' if name else plural
    scope = f' in the namespace "{request.namespace}"' if request.namespace else " at the cluster scope"
    return k8s.KubernetesError(
        status=403,
        reason="Forbidden",
        message=f'{subject} is forbidden: User "system:serviceaccount:{namespace}:{account}" cannot '
        f'{verb} resource "{plural}" in API group "{group}"{scope}',
        details={"name": name or "", "kind": plural},
    )
