"""
edge.http.speedups: the private names each speed-up needs are still there in
the installed packages, the versions are the ones they were checked against,
and with the switch off the stock code paths run.
"""

from edge.http import speedups


def test_every_private_name_the_speedups_need_is_present():
    # Fails after an upgrade that renamed or removed one: re-check the
    # speed-up against the new code, then raise CHECKED.
    assert speedups.missing() == []


def test_installed_packages_are_not_newer_than_the_checked_versions():
    assert speedups._unchecked() == []


def test_switch_off_runs_the_stock_paths(monkeypatch):
    import os

    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from edge.tls import sni

    creator = sni.SNIConnectionCreator(lambda name: None)
    try:
        speedups.configure(False)
        assert speedups.write is speedups._plain_write
        assert not speedups.lean_dispatch(object(), ())
        factory = sni.TLSServerFactory(creator, object(), Clock())
        assert factory.protocol is sni._StockTLSServerProtocol
        import hpack.hpack

        assert not isinstance(hpack.hpack.log, speedups._QuietLog)
        transport = StringTransport()
        speedups.write(transport, b"x")
        assert transport.value() == b"x"
    finally:
        speedups.configure(True)
    if os.environ.get("EDGE_SPEEDUPS", "").lower() in ("off", "0", "false", "no"):
        assert speedups.write is speedups._plain_write  # the stock run (make test-stock) stays stock
        return
    assert speedups.write is speedups._direct_write
    assert sni.TLSServerFactory(creator, object(), Clock()).protocol is sni._TLSServerProtocol


def test_the_environment_can_force_them_off(monkeypatch):
    monkeypatch.setenv("EDGE_SPEEDUPS", "off")
    try:
        speedups.configure(True)
        assert not speedups.enabled("direct_send")
    finally:
        monkeypatch.delenv("EDGE_SPEEDUPS")
        speedups.configure(True)
    assert speedups.enabled("direct_send")
