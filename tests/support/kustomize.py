"""Rendering ``deploy/k8s`` overlays: with ``kubectl kustomize`` when it is installed,
else with :func:`build`, a small renderer for the subset of kustomize the manifests use.

The subset: ``resources`` (files and directories), ``components``, ``configMapGenerator``
and ``secretGenerator`` (``files``, ``literals``, ``options.labels``,
``options.disableNameSuffixHash``), inline JSON 6902 ``patches`` with a kind/name
``target`` (``add``, ``replace``, ``remove``, ``test``), ``images`` (tags and digests),
``namespace`` (which names a Namespace object) and ``labels`` (without selectors). Name suffixes
are kustomize's content hashes and references to generated objects follow them, so the
output equals kubectl's (a test checks this wherever kubectl exists).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
HASH_LETTERS = str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"})


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(path: Path) -> list[Resource]:
    """The overlay's objects, with the real tool when available."""
    tool = kubectl()
    if tool is None:
        return build(path)
    result = subprocess.run(
        [tool, "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# -- the fallback renderer ---------------------------------------------------------------
def _go_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def content_hash(resource: Resource) -> str:
    """kustomize's name suffix (its encoder reads the name as empty)."""
    if resource["kind"] == "ConfigMap":
        fields = {"kind": "ConfigMap", "name": "", "data": resource.get("data", {})}
    else:
        fields = {
            "kind": "Secret",
            "type": resource.get("type", ""),
            "name": "",
            "data": resource.get("data", {}),
        }
    digest = hashlib.sha256(_go_json(fields).encode()).hexdigest()
    return digest[:10].translate(HASH_LETTERS)


class _Generated:
    """A generated object and whether its name takes the content hash."""

    def __init__(self, resource: Resource, hashed: bool) -> None:
        self.resource = resource
        self.hashed = hashed


def _base64(value: str) -> str:
    """kustomize's encoding: lines of 70 characters when longer than one line."""
    text = base64.b64encode(value.encode()).decode()
    if len(text) <= 70:
        return text
    return "".join(text[i : i + 70] + "\n" for i in range(0, len(text), 70))


def _read_sources(root: Path, spec: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, file_name = entry.rpartition("=")
        data[key or Path(file_name).name] = (root / file_name).read_text()
    for entry in spec.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = value
    return data


def _generate(root: Path, spec: dict[str, Any], kind: str) -> _Generated:
    options = spec.get("options", {})
    data = _read_sources(root, spec)
    resource: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if options.get("labels"):
        resource["metadata"]["labels"] = dict(options["labels"])
    if kind == "Secret":
        resource["type"] = spec.get("type", "Opaque")
        data = {k: _base64(v) for k, v in data.items()}
    resource["data"] = data
    return _Generated(resource, not options.get("disableNameSuffixHash", False))


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _apply_operation(doc: Any, op: dict[str, Any]) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "test":
        found = node[int(last)] if isinstance(node, list) else node[last]
        assert found == op["value"], f"patch test failed at {op['path']}: {found!r}"
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        if last == "-":
            node.append(copy.deepcopy(op["value"]))
        elif op["op"] == "add":
            node.insert(int(last), copy.deepcopy(op["value"]))
        else:
            node[int(last)] = copy.deepcopy(op["value"])
    else:
        node[last] = copy.deepcopy(op["value"])


def _patch(items: list[_Generated], patch: dict[str, Any]) -> None:
    target = patch["target"]
    for item in items:
        res = item.resource
        if res["kind"] == target.get("kind", res["kind"]) and res["metadata"]["name"] == target.get(
            "name", res["metadata"]["name"]
        ):
            for op in yaml.safe_load(patch["patch"]):
                _apply_operation(res, op)


def _pod_spec(res: Resource) -> dict[str, Any] | None:
    template = res.get("spec", {}).get("template")
    return template.get("spec") if isinstance(template, dict) else None


def _set_images(items: list[_Generated], images: list[dict[str, Any]]) -> None:
    for item in items:
        pod = _pod_spec(item.resource)
        if pod is None:
            continue
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name = container["image"].split("@")[0].rsplit(":", 1)[0]
            for image in images:
                if image["name"] == name:
                    new = image.get("newName", name)
                    tag, digest = image.get("newTag"), image.get("digest")
                    if digest:  # a digest wins over a tag, as in kustomize
                        container["image"] = f"{new}@{digest}"
                    else:
                        container["image"] = f"{new}:{tag}" if tag else new


def _label(items: list[_Generated], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        assert not entry.get("includeSelectors") and not entry.get("includeTemplates")
        for item in items:
            item.resource["metadata"].setdefault("labels", {}).update(entry["pairs"])


def _load(root: Path, component: bool = False) -> list[_Generated]:
    name = "kustomization.yaml"
    spec = yaml.safe_load((root / name).read_text())
    assert spec.get("kind", "Kustomization") == ("Component" if component else "Kustomization")
    items: list[_Generated] = []
    for entry in spec.get("resources", []):
        path = root / entry
        if path.is_dir():
            items += _load(path)
        else:
            items += [
                _Generated(doc, hashed=False) for doc in yaml.safe_load_all(path.read_text()) if doc
            ]
    for generator in spec.get("configMapGenerator", []):
        items.append(_generate(root, generator, "ConfigMap"))
    for generator in spec.get("secretGenerator", []):
        items.append(_generate(root, generator, "Secret"))
    for entry in spec.get("components", []):
        items = _apply_component(root / entry, items)
    for patch in spec.get("patches", []):
        _patch(items, patch)
    if spec.get("namespace"):
        for item in items:
            if item.resource["kind"] == "Namespace":  # kustomize names it after the field
                item.resource["metadata"]["name"] = spec["namespace"]
            else:
                item.resource["metadata"]["namespace"] = spec["namespace"]
    _label(items, spec.get("labels", []))
    _set_images(items, spec.get("images", []))
    return items


def _apply_component(root: Path, items: list[_Generated]) -> list[_Generated]:
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert spec["kind"] == "Component"
    added: list[_Generated] = []
    for entry in spec.get("resources", []):
        added += [
            _Generated(doc, hashed=False)
            for doc in yaml.safe_load_all((root / entry).read_text())
            if doc
        ]
    for generator in spec.get("configMapGenerator", []):
        added.append(_generate(root, generator, "ConfigMap"))
    out = items + added
    for patch in spec.get("patches", []):
        _patch(out, patch)
    return out


def _rename_references(pod: dict[str, Any], names: dict[tuple[str, str], str]) -> None:
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            ref = volume["configMap"]
            ref["name"] = names.get(("ConfigMap", ref["name"]), ref["name"])
        if "secret" in volume:
            ref = volume["secret"]
            ref["secretName"] = names.get(("Secret", ref["secretName"]), ref["secretName"])
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in source:
                    ref = source[field]
                    ref["name"] = names.get((kind, ref["name"]), ref["name"])


def build(root: Path) -> list[Resource]:
    items = _load(root)
    names: dict[tuple[str, str], str] = {}
    for item in items:
        if item.hashed:
            res = item.resource
            old = res["metadata"]["name"]
            res["metadata"]["name"] = f"{old}-{content_hash(res)}"
            names[(res["kind"], old)] = res["metadata"]["name"]
    for item in items:
        pod = _pod_spec(item.resource)
        if pod is not None:
            _rename_references(pod, names)
    return [item.resource for item in items]
