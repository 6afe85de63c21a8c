"""The core is pure: it reads no file and no environment variable, and imports neither the
event loop nor a network client. Its callers pass in what it needs (the time included)."""

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import gateway.core

MODULES = sorted(f"gateway.core.{m.name}" for m in pkgutil.iter_modules(gateway.core.__path__))
#: modules the core may not import (nor any of their submodules)
FORBIDDEN_IMPORTS = frozenset(
    {"asyncio", "aiohttp", "redis", "os", "pathlib", "io", "socket", "subprocess", "shutil"}
)
#: methods that read files or directories
READ_METHODS = frozenset({"read_text", "read_bytes", "iterdir", "glob", "rglob", "listdir"})
#: names that read the environment
ENVIRONMENT = frozenset({"environ", "getenv", "environb"})


def impurities(module_name: str) -> list[str]:
    """What in ``module_name``'s source reads a file, the environment or imports I/O."""
    return impurities_in(inspect.getsource(importlib.import_module(module_name)))


def impurities_in(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        found += [f"{line}: imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "open"
        ):
            found.append(f"{line}: calls open()")
        if isinstance(node, ast.Attribute) and node.attr in READ_METHODS | ENVIRONMENT:
            found.append(f"{line}: uses .{node.attr}")
        if isinstance(node, ast.Name) and node.id in ENVIRONMENT:
            found.append(f"{line}: uses {node.id}")
    return sorted(found, key=lambda finding: int(finding.split(":")[0]))


@pytest.mark.parametrize("module_name", MODULES)
def test_a_core_module_does_no_io(module_name: str) -> None:
    assert impurities(module_name) == []


def test_the_core_loads_no_event_loop_or_network_client() -> None:
    """Imported alone (a fresh interpreter), the core brings in none of them either."""
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'asyncio', 'aiohttp', 'redis'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_checks_see_io() -> None:
    """The checks themselves: each kind of impurity is caught (the loading of the signing
    keys, which used to live in the core, among them)."""
    sample = (
        "import asyncio\n"
        "from redis.asyncio import Redis\n"
        "import os\n"
        "from pathlib import Path\n"
        "key = os.environ['K']\n"
        "text = open('f').read()\n"
        "more = Path('f').read_text()\n"
    )
    assert impurities_in(sample) == [
        "1: imports asyncio",
        "2: imports redis.asyncio",
        "3: imports os",
        "4: imports pathlib",
        "5: uses .environ",
        "6: calls open()",
        "7: uses .read_text",
    ]
    assert "uses .read_text" in " ".join(impurities("gateway.config.signing_keys"))
