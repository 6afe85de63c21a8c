"""The web layer sees the upstream only through its package's public interface."""

import ast
from pathlib import Path

import gateway.upstream

WEB = Path(__file__).resolve().parents[2] / "gateway" / "web"


def upstream_imports(path: Path) -> list[str]:
    """Every ``gateway.upstream...`` module a file imports from."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway.upstream"):
            found.append(node.module or "")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("gateway.upstream")]
    return found


def test_the_web_layer_imports_no_upstream_implementation() -> None:
    seen = {path.name: upstream_imports(path) for path in sorted(WEB.glob("*.py"))}
    assert any(seen.values())  # the layer does use the upstream
    for name, modules in seen.items():
        assert set(modules) <= {"gateway.upstream"}, f"{name} imports {modules}"


def test_the_public_interface_is_what_the_web_layer_needs() -> None:
    for name in ("UpstreamClient", "UpstreamResponse", "Transport", "ForwardContext"):
        assert name in gateway.upstream.__all__
