"""edge/tap.py builds the TLS service for TLS entry points (HTTP/2 is part of the HTTP service)."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock

from edge.config import Config, EntryPoint, TLSConfig
from edge.tap import build_service, makeService
from edge.tls.service import TLSService


def _config(tmp_path, **tls):
    return Config(
        entrypoints=(
            EntryPoint("http", "tcp:0:interface=127.0.0.1"),
            EntryPoint("https", "tcp:0:interface=127.0.0.1", tls=True),
        ),
        tls=TLSConfig(state_dir=str(tmp_path / "state"), **tls),
    )


def test_tls_entry_point_gets_tls_service(tmp_path):
    root = build_service(_config(tmp_path, internal_ca=True), MemoryReactorClock())
    assert isinstance(root.tls, TLSService)
    assert root.tls in list(root)
    assert root.tls.root_certificate_pem().startswith(b"-----BEGIN CERTIFICATE-----")
    # No second HTTP/2 stack beside the HTTP service.
    assert [s.name for s in root if s.name in ("http2", "h2")] == []


def test_http2_off_means_alpn_offers_http11_only(tmp_path):
    root = build_service(_config(tmp_path, http2=False), MemoryReactorClock())
    assert isinstance(root.tls, TLSService)
    assert root.tls.creator._settings.alpn == (b"http/1.1",)


def test_no_tls_entry_point_no_tls_service(tmp_path):
    config = Config(entrypoints=(EntryPoint("http", "tcp:0:interface=127.0.0.1"),))
    root = build_service(config, MemoryReactorClock())
    assert root.tls is None


def test_missing_shared_ca_stops_start_up_with_one_line(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(
        "[tls]\ninternal_ca = true\n"
        f'ca_certificate = "{tmp_path}/absent.crt"\nca_key = "{tmp_path}/absent.key"\n'
        f'state_dir = "{tmp_path}/state"\n'
        "[dns]\nenabled = false\n"
    )
    with pytest.raises(SystemExit) as e:
        makeService({"config": str(path)})
    message = str(e.value)
    assert message.startswith("edge: configuration error: tls.ca_certificate")
    assert "init-ca" in message
    assert not os.path.exists(tmp_path / "absent.crt")
