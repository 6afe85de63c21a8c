"""The console scripts, which pyproject.toml cannot make conditional.

The reference backend (``chat_backend``) is packaged, with its ``chat-backend`` script,
only when its directory is in the source tree: a checkout (``pip install -e .``, the
``chat-backend`` image target) has both, while the production image builds its wheel
from a tree without it, so neither the package nor a dangling script reaches that image.
"""

from pathlib import Path

from setuptools import setup

scripts = ["gateway = gateway.cli:main"]
if (Path(__file__).resolve().parent / "chat_backend" / "__init__.py").is_file():
    scripts.append("chat-backend = chat_backend.__main__:main")

setup(entry_points={"console_scripts": scripts})
