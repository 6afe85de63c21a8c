"""``gateway health``: ask the admin listener the configuration names whether the
process lives (``/healthz``) or is ready (``/readyz``), as a container health check.

It reads the configuration the way ``gateway serve`` does (file, then ``GATEWAY__...``
overrides), so the check follows the admin port and host wherever they are set. A
listener bound to every address (``0.0.0.0``, ``::``) is asked on the loopback address.
Proxy environment variables are ignored: the probe never leaves the host.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from gateway.config import AdminSettings

#: a listener on every address is reached on the loopback address of its family
LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


def admin_url(admin: AdminSettings, path: str) -> str:
    host = LOOPBACK.get(admin.host, admin.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{admin.port}{path}"


def probe_admin(admin: AdminSettings, path: str, timeout: float) -> str | None:
    """None when ``path`` answers 200, else why not (one line for the operator)."""
    if not admin.enabled:
        return "the admin listener is disabled (admin.enabled: false): nothing to ask"
    url = admin_url(admin, path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except urllib.error.URLError as exc:
        return f"{url}: {exc.reason}"
    except OSError as exc:  # timeouts, resets
        return f"{url}: {exc}"
    return None if status == 200 else f"{url} answered {status}"
