"""
SIGHUP reload: a good file reaches every part tap passed in; a bad one is
logged in one line and the running configuration stays.  (The file is read
in a pool thread: tests/test_reload_threads.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from twisted.application.service import MultiService, Service
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from edge import config as _config
from edge.lifecycle import ReloadService
from edge.tap import EdgeService
from tests.test_reload_threads import HeldPool, ThreadsReactor


class Recorder(Service):
    def __init__(self):
        self.configs = []

    def reload(self, config):
        self.configs.append(config)


class NoArgs(Service):
    """Like the TLS service: reads its own files in the pool, takes them on the reactor."""

    def __init__(self):
        self.calls = 0

    def read_reload(self, config):
        return config.http.shutdown_grace

    def apply_reload(self, read):
        self.calls += 1


class Broken(Service):
    def reload(self, config):
        raise RuntimeError("cannot take it")


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "edge.toml")
        self.write('[http]\nshutdown_grace = 3.0\n')
        self.reactor = ThreadsReactor()
        self.pool = HeldPool()
        self.root = EdgeService(_config.load(self.path))
        self.nested = MultiService()
        self.nested.setServiceParent(self.root)
        self.recorder = Recorder()
        self.recorder.setServiceParent(self.nested)
        self.noargs = NoArgs()
        self.noargs.setServiceParent(self.root)
        broken = Broken()
        broken.setServiceParent(self.root)
        self.lifecycle = ReloadService(
            lambda: _config.load(self.path), self.reactor, self.pool, self.root,
            parts=[broken, self.recorder], staged=[self.noargs],
        )
        self.lifecycle.setServiceParent(self.root)
        self.lifecycle.running = True  # as under twistd (startService would take SIGHUP)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def hangup(self):
        done = self.lifecycle.handle_hangup()
        self.pool.run_next()  # the file is read in a pool thread
        self.reactor.drain()  # and applied on this one
        return self.successResultOf(done)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def test_good_config_reaches_every_service(self):
        self.write('[http]\nshutdown_grace = 7.5\n')
        self.assertTrue(self.hangup())
        self.assertEqual([c.http.shutdown_grace for c in self.recorder.configs], [7.5])
        self.assertEqual(self.noargs.calls, 1)
        self.assertEqual(self.root.config.http.shutdown_grace, 7.5)
        # The broken service's failure is logged and did not stop the others.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_config_is_rejected_and_the_running_one_stays(self):
        self.write('[http]\nshutdown_grace = "soon"\n')
        self.assertFalse(self.hangup())
        self.assertEqual(self.recorder.configs, [])
        self.assertEqual(self.noargs.calls, 0)
        self.assertEqual(self.root.config.http.shutdown_grace, 3.0)
        errors = [e for e in self.events if e.get("log_level").name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("http.shutdown_grace: expected a number", errors[0]["error"])
        self.assertIn("keeping the running configuration", errors[0]["log_format"])

    def test_unreadable_file_is_rejected(self):
        os.remove(self.path)
        self.assertFalse(self.hangup())
        self.assertEqual(self.lifecycle.rejected, 1)
        self.assertEqual(self.recorder.configs, [])

    def test_sighup_queues_the_reload_on_the_reactor(self):
        calls = []
        self.reactor.callFromThread = lambda f, *a, **kw: calls.append(f)
        before = signal.getsignal(signal.SIGHUP)
        self.root.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
        finally:
            self.root.stopService()
        self.assertEqual(calls, [self.lifecycle.handle_hangup])
        # The handler is only run from the reactor, never in the signal frame.
        self.assertEqual(self.recorder.configs, [])
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
