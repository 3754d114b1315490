"""A small kustomize renderer for ``deploy/k8s``, so the manifest tests need no binary.

It covers the subset the manifests use: ``resources`` (files or kustomization folders),
``components``, ``namespace``, ``images`` and ``patches``: strategic-merge patches from a file or
inline, matched by kind and name, and inline JSON 6902 patches of ``add`` operations on the one
object a ``target`` (group, version, kind, name) names. Any other field raises :class:`UnsupportedKustomization`, so a
manifest that starts using another feature fails the tests until this file covers it;
``tests/test_k8s.py`` also compares its output with ``kubectl kustomize`` wherever that exists.

Order, as kustomize does it: a folder's resources are rendered first (each sub-folder completely),
then each component adds its resources and applies its own transformers to everything gathered so
far, then the folder's own transformers run: patches, then namespace, then images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "StorageClass", "PersistentVolume", "APIService", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "RuntimeClass", "IngressClass",
}
# patchMergeKey of the built-in list fields the strategic merge needs (k8s.io/api struct tags)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}

Obj = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a field or form this renderer does not implement."""


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in ``directory`` into its list of objects."""
    return _build(Path(directory).resolve(), "Kustomization")


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what kustomize keys resources by."""
    meta = obj.get("metadata", {})
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _load_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - SUPPORTED_FIELDS
            if unknown:
                raise UnsupportedKustomization(f"{path}: fields {sorted(unknown)} are not implemented")
            return data
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _load_objects(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _add(objects: list[Obj], new: list[Obj]) -> list[Obj]:
    seen = {_match_id(o) for o in objects}
    for obj in new:
        if _match_id(obj) in seen:
            raise ValueError(f"may not add resource with an already registered id: {object_id(obj)}")
        seen.add(_match_id(obj))
    return objects + new


def _build(directory: Path, kind: str, objects: list[Obj] | None = None) -> list[Obj]:
    kust = _load_kustomization(directory)
    if kust.get("kind", "Kustomization") != kind:
        raise UnsupportedKustomization(f"{directory}: expected a {kind}, found {kust.get('kind')}")
    gathered: list[Obj] = list(objects or [])
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        loaded = _build(target, "Kustomization") if target.is_dir() else _load_objects(target)
        gathered = _add(gathered, loaded)
    for entry in kust.get("components", []):
        gathered = _build((directory / entry).resolve(), "Component", gathered)
    return _transform(directory, kust, gathered)


def _transform(directory: Path, kust: Obj, objects: list[Obj]) -> list[Obj]:
    objects = copy.deepcopy(objects)
    for patch in kust.get("patches", []):
        if set(patch) == {"target", "patch"}:
            objects = _apply_json6902(objects, patch["target"], yaml.safe_load(patch["patch"]), directory)
            continue
        if set(patch) - {"path", "patch"} or len(patch) != 1:
            raise UnsupportedKustomization(f"{directory}: only `path`, inline `patch`, or `target` + `patch`: {patch}")
        text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
        for doc in yaml.safe_load_all(text):
            if doc:
                objects = _apply_patch(objects, doc)
    namespace = kust.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace
    for image in kust.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(container["image"], image)
    return objects


def _match_id(obj: Obj) -> tuple[str, str, str]:
    """Group, kind and name: a patch without a namespace matches the object in any namespace."""
    group = obj["apiVersion"].rpartition("/")[0]
    return group, obj["kind"], obj["metadata"]["name"]


def _apply_patch(objects: list[Obj], patch: Obj) -> list[Obj]:
    matches = [i for i, obj in enumerate(objects) if _match_id(obj) == _match_id(patch)]
    if len(matches) != 1:
        raise ValueError(f"patch {_match_id(patch)} matches {len(matches)} objects")
    (index,) = matches
    if patch.get("$patch") == "delete":
        return objects[:index] + objects[index + 1:]
    target = objects[index]
    objects[index] = _merge(target, patch, builtin=_is_builtin(target["apiVersion"]))
    return objects


def _apply_json6902(objects: list[Obj], target: Obj, ops: list[Obj], directory: Path) -> list[Obj]:
    """JSON 6902 ``add`` operations on the one object ``target`` names (``/-`` appends to a list)."""
    if set(target) - {"group", "version", "kind", "name"} or not isinstance(ops, list):
        raise UnsupportedKustomization(f"{directory}: a target by group, version, kind and name, and a list of ops")
    api_version = f"{target['group']}/{target['version']}" if target.get("group") else target["version"]
    matches = [i for i, obj in enumerate(objects)
               if (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) == (api_version, target["kind"], target["name"])]
    if len(matches) != 1:
        raise ValueError(f"target {target} matches {len(matches)} objects")
    objects[matches[0]] = obj = copy.deepcopy(objects[matches[0]])
    for op in ops:
        if op.get("op") != "add" or not op.get("path", "").startswith("/"):
            raise UnsupportedKustomization(f"{directory}: only `add` operations: {op}")
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"][1:].split("/")]
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        else:
            node[last] = op["value"]
    return objects


def _is_builtin(api_version: str) -> bool:
    """Core and *.k8s.io groups get strategic merge; custom resources get a JSON merge patch."""
    group = api_version.rpartition("/")[0]
    return group in ("", "apps", "batch", "policy", "autoscaling") or group.endswith(".k8s.io")


def _merge(base: Any, patch: Any, *, builtin: bool, field: str = "") -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, builtin=builtin, field=key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list) and builtin:
        key = _merge_key(field, base + patch)
        if key is not None:
            return _merge_list(base, patch, key)
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":  # container ports merge on containerPort, Service ports on port
        return "containerPort" if any("containerPort" in item for item in items) else "port"
    return MERGE_KEYS.get(field)


def _merge_list(base: list[Obj], patch: list[Obj], key: str) -> list[Obj]:
    out = [copy.deepcopy(item) for item in base]
    for item in patch:
        index = next((i for i, existing in enumerate(out) if existing.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                out.pop(index)
        elif index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = _merge(out[index], item, builtin=True)
    return out


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if obj["kind"] != "Pod" else spec
    return [c for field in ("initContainers", "containers") for c in pod.get(field, [])]


def _retag(reference: str, image: Obj) -> str:
    """Apply one ``images:`` entry to an image reference (name[:tag][@digest])."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:  # a colon before the last slash is a registry port, not a tag
        name, tag = name[:colon], name[colon + 1:]
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    suffix = f":{tag}" if tag else ""
    return f"{name}{suffix}@{digest}" if digest and "newTag" not in image else f"{name}{suffix}"
