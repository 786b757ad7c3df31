"""
A stand-in provider for test processes: a pickled Snapshot in a file.

The DNS and HTTP test harnesses run one front end alone; tests change the
cluster by replacing the file, which is polled and reported to the publisher
as discovery would report it.
"""

import os
import pickle


def follow_snapshot_file(publisher, path: str, interval: float = 0.05):
    """Report the file's snapshot now and whenever it changes; returns the LoopingCall."""
    from twisted.internet.task import LoopingCall

    stamp = [None]

    def poll():
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != stamp[0]:
            stamp[0] = key
            with open(path, "rb") as f:
                publisher.report("test", pickle.load(f))

    poll()
    publisher.flush()
    loop = LoopingCall(poll)
    loop.start(interval, now=False)
    return loop
