"""
Run edge's DNS service alone, for tests and the benchmark.

    python -m tests.dns_harness CONFIG.toml SNAPSHOT.pickle

The snapshot file holds a pickled :class:`edge.snapshot.Snapshot`; it is
re-read whenever it changes (tests replace it to change the cluster) and
reported to the publisher as discovery would.  Prints ``ready`` once the
listeners are bound.
"""

import os
import pickle
import sys


def main(config_path: str, snapshot_path: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from edge.config import load
    from edge.discovery.publisher import SnapshotPublisher
    from edge.dns import make_dns_service

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    config = load(config_path)
    publisher = SnapshotPublisher(reactor, debounce=0.05)
    stamp = [None]

    def poll():
        try:
            st = os.stat(snapshot_path)
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) != stamp[0]:
            stamp[0] = (st.st_mtime_ns, st.st_size, st.st_ino)
            with open(snapshot_path, "rb") as f:
                publisher.report("test", pickle.load(f))

    poll()
    publisher.flush()
    service = make_dns_service(config, publisher, reactor)
    service.privilegedStartService()
    service.startService()
    LoopingCall(poll).start(0.05, now=False)
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
