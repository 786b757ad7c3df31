"""
Run edge's DNS service alone, for tests and the benchmark.

    python -m tests.dns_harness CONFIG.toml SNAPSHOT.pickle

The snapshot file holds a pickled :class:`edge.snapshot.Snapshot`; it is
re-read whenever it changes (tests replace it to change the cluster) and
reported to the publisher as discovery would.  Prints ``ready`` once the
listeners are bound.
"""

import sys


def main(config_path: str, snapshot_path: str) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from edge.config import load
    from edge.discovery.publisher import SnapshotPublisher
    from edge.dns import make_dns_service
    from tests.snapshot_file import follow_snapshot_file

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    config = load(config_path)
    publisher = SnapshotPublisher(reactor, debounce=0.05)
    follow_snapshot_file(publisher, snapshot_path)
    service = make_dns_service(config, publisher, reactor)
    service.privilegedStartService()
    service.startService()
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
