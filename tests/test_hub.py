"""require_hub: a quick, one-line refusal when the Hugging Face hub cannot be reached."""

import socket
import time

import pytest

from zoft.errors import ZoftError
from zoft.hub import hub_reachable, require_hub

HINT = "pass --data-dir or set GLUE_DIR"


@pytest.fixture
def online_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_variable_refuses_at_once(online_env, variable):
    online_env.setenv(variable, "1")
    start = time.monotonic()
    with pytest.raises(ZoftError) as error:
        require_hub("download GLUE mrpc", HINT)
    assert time.monotonic() - start < 0.5
    assert str(error.value) == (
        f"cannot reach the Hugging Face hub (huggingface.co) to download GLUE mrpc: {variable} is on; {HINT}"
    )


def test_closed_port_refuses_quickly(online_env):
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(ZoftError) as error:
        require_hub("load the model bert-base-uncased", "pass a local folder as --model")
    assert time.monotonic() - start < 5
    assert str(error.value) == (
        "cannot reach the Hugging Face hub (127.0.0.1) to load the model bert-base-uncased: "
        "pass a local folder as --model"
    )


def test_unresolvable_host_refuses(online_env):
    online_env.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(ZoftError, match=r"\(hub.invalid\)"):
        require_hub("download GLUE rte", HINT)
    assert time.monotonic() - start < 5


def test_listening_endpoint_passes(online_env):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        require_hub("download GLUE mrpc", HINT)
        assert hub_reachable()


def test_hub_reachable_is_the_same_check(online_env):
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable()


def test_an_empty_hint_leaves_no_dangling_colon(online_env):
    online_env.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(ZoftError) as error:
        require_hub("check for model updates", "")
    assert str(error.value).endswith("to check for model updates: HF_HUB_OFFLINE is on")


def test_offline_value_zero_is_online(online_env):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        online_env.setenv("HF_HUB_OFFLINE", "0")
        require_hub("download GLUE mrpc", HINT)


def test_a_proxy_is_the_first_hop(online_env):
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        online_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        online_env.setenv("HF_ENDPOINT", "https://hub.invalid")
        require_hub("download GLUE mrpc", HINT)  # the proxy resolves the hub, not us
