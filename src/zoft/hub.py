"""A fast check that the Hugging Face hub is reachable, before any library spends half a minute retrying."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

from zoft.errors import ZoftError

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = ("1", "on", "yes", "true")
CONNECT_TIMEOUT_S = 3.0


def require_hub(purpose: str, hint: str) -> None:
    """Raise a one-line ZoftError unless the hub can be reached to `purpose` ("download GLUE mrpc").

    `hint` tells the user what to do instead, e.g. "pass --data-dir <GLUE folder> or set GLUE_DIR".
    Offline variables (HF_HUB_OFFLINE=1, ...) refuse at once; otherwise a TCP connection to the host of
    HF_ENDPOINT (or to the proxy in between) must open within a few seconds.
    """
    endpoint = _endpoint()
    host = urlsplit(endpoint).hostname or endpoint
    unreachable = f"cannot reach the Hugging Face hub ({host}) to {purpose}"
    offline = _offline_variable()
    if offline:
        raise ZoftError(f"{unreachable}: {offline} is on" + (f"; {hint}" if hint else ""))
    if not _can_connect(*_first_hop(endpoint), timeout=CONNECT_TIMEOUT_S):
        raise ZoftError(unreachable + (f": {hint}" if hint else ""))


def hub_reachable() -> bool:
    """The same check as :func:`require_hub`, as a yes or no."""
    return _offline_variable() is None and _can_connect(*_first_hop(_endpoint()), timeout=CONNECT_TIMEOUT_S)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _offline_variable() -> str | None:
    """The name of the first offline variable that is switched on, if any."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in TRUE_VALUES:
            return name
    return None


def _first_hop(endpoint: str) -> tuple[str, int]:
    """The (host, port) a request to `endpoint` connects to first: the proxy when one applies."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme or "https"
    host = parts.hostname or endpoint
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or proxy, proxy_parts.port or 80
    return host, parts.port or (443 if scheme == "https" else 80)


def _can_connect(host: str, port: int, timeout: float) -> bool:
    # A thread bounds the whole attempt: name resolution ignores the socket timeout and may hang for long.
    reached = threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.set()
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return reached.is_set()
