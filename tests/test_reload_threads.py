"""
SIGHUP reload off the reactor thread: the config file, the files its
``[middlewares]`` name and the TLS certificate directory are read in a pool
thread, the result is applied on the reactor thread, reloads run one at a
time in order, and a failed one keeps the running configuration.  The parts
reloaded are the ones edge.tap passes in, nothing found in the service tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edge import config as _config
from edge.discovery import labels as _labels
from edge.discovery.publisher import SnapshotPublisher
from edge.lifecycle import ReloadService
from edge.tls import service as _tls_service
from edge.tls.service import TLSService
from tests.test_tls_store import TestCA, write


class ThreadsReactor(MemoryReactorClock):
    """``callFromThread`` (thread-safe) queues; :meth:`drain` runs the calls on the test's thread."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._queued: list = []

    def callFromThread(self, f, *args, **kwargs):
        with self._lock:
            self._queued.append((f, args, kwargs))

    def drain(self) -> int:
        ran = 0
        while True:
            with self._lock:
                if not self._queued:
                    return ran
                f, args, kwargs = self._queued.pop(0)
            f(*args, **kwargs)
            ran += 1


class HeldPool:
    """A thread pool double: work waits until :meth:`run_next` runs it in a real thread of its own."""

    def __init__(self):
        self.pending: list = []
        self.threads: list[threading.Thread] = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.pending.append((on_result, f, args, kwargs))

    def run_next(self) -> None:
        on_result, f, args, kwargs = self.pending.pop(0)

        def work():
            try:
                result = f(*args, **kwargs)
            except BaseException as e:
                on_result(False, e)
            else:
                on_result(True, result)

        thread = threading.Thread(target=work, name=f"reload-pool-{len(self.threads)}")
        self.threads.append(thread)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the pool work did not finish"


class Holder(MultiService):
    def __init__(self, config):
        super().__init__()
        self.config = config


class Part(Service):
    """A ``reload(config)`` part that records the thread it was called on."""

    def __init__(self, calls, name):
        self.calls = calls
        self.name = name

    def reload(self, config):
        self.calls.append((self.name, config.http.shutdown_grace, threading.current_thread()))


class Staged(Service):
    """Reads in the pool, applies on the reactor thread, as TLS does."""

    def __init__(self, calls):
        self.calls = calls
        self.name = "staged"

    def read_reload(self, config):
        self.calls.append(("staged read", config.http.shutdown_grace, threading.current_thread()))
        return config.http.shutdown_grace

    def apply_reload(self, read):
        self.calls.append(("staged apply", read, threading.current_thread()))


class Base(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.path = os.path.join(self.directory, "edge.toml")
        self.write(0.5)
        self.reactor = ThreadsReactor()
        self.pool = HeldPool()
        self.holder = Holder(_config.load(self.path))
        self.loads: list[threading.Thread] = []
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def write(self, grace, extra=""):
        with open(self.path, "w") as f:
            f.write(f"[http]\nshutdown_grace = {grace}\n{extra}")

    def load(self):
        self.loads.append(threading.current_thread())
        return _config.load(self.path)

    def lifecycle(self, parts=(), staged=(), load=None):
        service = ReloadService(load or self.load, self.reactor, self.pool, self.holder, parts=parts, staged=staged)
        service.setServiceParent(self.holder)
        service.startService()  # takes SIGHUP until the test ends
        self.addCleanup(service.stopService)
        return service

    def finish(self):
        """Run the one pending read in its thread, then what it queued for the reactor."""
        self.assertEqual(len(self.pool.pending), 1)
        self.pool.run_next()
        self.reactor.drain()


class OffTheReactorThreadTests(Base):
    def test_files_are_read_in_the_pool_and_applied_on_the_reactor_thread(self):
        users = os.path.join(self.directory, "users")
        with open(users, "w") as f:
            f.write("ann:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/\n")
        reads = []
        read_file = _labels._read_file
        self.patch(_labels, "_read_file", lambda path, limit: (reads.append(threading.current_thread()), read_file(path, limit))[1])
        calls: list = []
        stray = Part(calls, "not passed in")  # in the tree with a reload(), never asked
        stray.setServiceParent(self.holder)
        service = self.lifecycle(parts=[Part(calls, "a"), Part(calls, "b")], staged=[Staged(calls)])
        self.write(2.5, f'[middlewares.auth.basicAuth]\nusersFile = "{users}"\n')
        main = threading.current_thread()

        done = service.handle_hangup()
        # Nothing was read on this (the reactor's) thread: the work waits in the pool.
        self.assertEqual((self.loads, reads, calls), ([], [], []))
        self.assertNoResult(done)
        self.pool.run_next()
        pool_thread = self.pool.threads[0]
        self.assertEqual(self.loads, [pool_thread])
        self.assertEqual(reads, [pool_thread])  # the middleware's usersFile, with the config file
        self.assertEqual(calls, [("staged read", 2.5, pool_thread)])
        self.assertEqual(self.holder.config.http.shutdown_grace, 0.5)  # not applied from the thread
        self.reactor.drain()
        self.assertIs(self.successResultOf(done), True)
        self.assertEqual(calls[1:], [("a", 2.5, main), ("b", 2.5, main), ("staged apply", 2.5, main)])
        self.assertEqual(self.holder.config.http.shutdown_grace, 2.5)
        self.assertEqual(self.holder.config.middlewares[0].name, "auth")
        self.assertEqual((service.reloads, service.rejected), (1, 0))

    def test_the_signal_only_queues_the_reload(self):
        service = self.lifecycle()
        service._on_signal(1, None)
        self.assertEqual((self.loads, self.pool.pending), ([], []))
        self.reactor.drain()  # the reactor thread asks the pool
        self.assertEqual(self.loads, [])
        self.finish()
        self.assertEqual(len(self.loads), 1)
        self.assertEqual(service.reloads, 1)


class OrderTests(Base):
    def test_sighups_while_reading_run_once_after_it_with_the_newest_file(self):
        calls: list = []
        service = self.lifecycle(parts=[Part(calls, "p")])
        self.write(1.0)
        first = service.handle_hangup()
        self.pool.run_next()  # read 1.0; its result waits for the reactor
        self.write(2.0)
        second = service.handle_hangup()
        self.write(3.0)
        third = service.handle_hangup()
        # No second read runs beside the first: it could finish first and be overwritten by it.
        self.assertEqual(self.pool.pending, [])
        self.reactor.drain()
        self.assertIs(self.successResultOf(first), True)
        self.assertEqual([c[1] for c in calls], [1.0])
        self.assertNoResult(second)
        self.assertNoResult(third)
        self.finish()  # one read for both SIGHUPs, of the file as it is now
        self.assertEqual([c[1] for c in calls], [1.0, 3.0])
        self.assertIs(self.successResultOf(second), True)
        self.assertIs(self.successResultOf(third), True)
        self.assertEqual(self.holder.config.http.shutdown_grace, 3.0)
        self.assertEqual((service.reloads, len(self.loads)), (2, 2))
        self.assertEqual(self.pool.pending, [])

    def test_a_reload_asked_during_a_rejected_one_still_runs(self):
        service = self.lifecycle()
        self.write('"soon"')
        first = service.handle_hangup()
        self.pool.run_next()  # reads the bad file
        second = service.handle_hangup()
        self.write(4.0)
        self.reactor.drain()
        self.assertIs(self.successResultOf(first), False)
        self.assertNoResult(second)
        self.finish()
        self.assertIs(self.successResultOf(second), True)
        self.assertEqual((service.reloads, service.rejected), (1, 1))
        self.assertEqual(self.holder.config.http.shutdown_grace, 4.0)

    def test_a_read_finishing_after_stop_is_not_applied(self):
        calls: list = []
        service = self.lifecycle(parts=[Part(calls, "p")])
        self.write(9.0)
        done = service.handle_hangup()
        service.stopService()
        self.finish()
        self.assertIs(self.successResultOf(done), False)
        self.assertEqual(calls, [])
        self.assertEqual(self.holder.config.http.shutdown_grace, 0.5)


class FailureTests(Base):
    def test_a_bad_file_keeps_the_running_configuration_and_is_counted(self):
        calls: list = []
        service = self.lifecycle(parts=[Part(calls, "p")], staged=[Staged(calls)])
        running = self.holder.config
        self.write('"soon"')
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), False)
        self.assertIs(self.holder.config, running)
        self.assertEqual(calls, [])
        self.assertEqual((service.reloads, service.rejected), (0, 1))
        errors = [e for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("http.shutdown_grace: expected a number", errors[0]["error"])
        self.assertIn("keeping the running configuration", errors[0]["log_format"])
        # The next good reload is not blocked by the failed one.
        self.write(6.0)
        again = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(again), True)
        self.assertEqual(self.holder.config.http.shutdown_grace, 6.0)
        self.assertEqual((service.reloads, service.rejected), (1, 1))

    def test_an_unexpected_error_while_reading_is_logged_and_counted(self):
        def load():
            raise RuntimeError("disk on fire")

        service = self.lifecycle(load=load)
        running = self.holder.config
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), False)
        self.assertIs(self.holder.config, running)
        self.assertEqual(service.rejected, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_part_whose_read_fails_keeps_its_state_and_the_others_reload(self):
        calls: list = []

        class BadRead(Staged):
            def read_reload(self, config):
                raise OSError("cannot list")

        service = self.lifecycle(parts=[Part(calls, "p")], staged=[BadRead([])])
        self.write(7.0)
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), True)
        self.assertEqual([c[:2] for c in calls], [("p", 7.0)])
        self.assertEqual(self.holder.config.http.shutdown_grace, 7.0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class TLSReloadTests(Base):
    def setUp(self):
        super().setUp()
        self.ca = TestCA()
        self.certs = os.path.join(self.directory, "certs")
        os.mkdir(self.certs)
        write(os.path.join(self.certs, "alpha.pem"), self.ca.bundle("alpha.lan"))
        self.write(0.5, f'[tls]\ncertificates = "{self.certs}"\n')
        self.holder.config = _config.load(self.path)
        clock = Clock()
        self.tls = TLSService(self.holder.config.tls, SnapshotPublisher(clock, debounce=0), clock, poll_interval=0)
        self.scans: list[threading.Thread] = []
        scan = _tls_service.scan
        self.patch(_tls_service, "scan", lambda *a: (self.scans.append(threading.current_thread()), scan(*a))[1])

    def test_the_certificate_directory_is_read_in_the_pool_and_swapped_on_the_reactor_thread(self):
        service = self.lifecycle(staged=[self.tls])
        write(os.path.join(self.certs, "beta.pem"), self.ca.bundle("beta.lan"))
        before = self.tls.index
        done = service.handle_hangup()
        self.assertEqual(self.scans, [])
        self.pool.run_next()
        self.assertEqual(self.scans, [self.pool.threads[0]])
        self.assertIs(self.tls.index, before)  # reading changed nothing
        self.assertIsNone(self.tls.index.lookup("beta.lan"))
        self.reactor.drain()
        self.assertIs(self.successResultOf(done), True)
        self.assertIsNotNone(self.tls.index.lookup("beta.lan"))
        self.assertIsNotNone(self.tls.index.lookup("alpha.lan"))

    def test_a_new_directory_in_the_file_is_read_and_taken(self):
        other = os.path.join(self.directory, "other")
        os.mkdir(other)
        write(os.path.join(other, "gamma.pem"), self.ca.bundle("gamma.lan"))
        service = self.lifecycle(staged=[self.tls])
        self.write(0.5, f'[tls]\ncertificates = "{other}"\n')
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), True)
        self.assertEqual(self.tls.config.certificates, other)
        self.assertIsNotNone(self.tls.index.lookup("gamma.lan"))
        self.assertIsNone(self.tls.index.lookup("alpha.lan"))

    def test_an_unreadable_directory_keeps_the_certificates_loaded_before(self):
        service = self.lifecycle(staged=[self.tls])
        shutil.rmtree(self.certs)
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), True)  # the config file itself was fine
        self.assertIsNotNone(self.tls.index.lookup("alpha.lan"))
        errors = [e for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("keeping the {count} certificates loaded before", errors[0]["log_format"])
        self.assertEqual(errors[0]["count"], 1)

    def test_a_default_certificate_file_is_read_in_the_pool(self):
        default = os.path.join(self.directory, "default.pem")
        write(default, self.ca.bundle("default.lan"))
        loads = []
        load_bundle = _tls_service.load_bundle
        self.patch(_tls_service, "load_bundle",
                   lambda *a, **kw: (loads.append(threading.current_thread()), load_bundle(*a, **kw))[1])
        service = self.lifecycle(staged=[self.tls])
        self.write(0.5, f'[tls]\ncertificates = "{self.certs}"\ndefault_certificate = "{default}"\n')
        done = service.handle_hangup()
        self.finish()
        self.assertIs(self.successResultOf(done), True)
        self.assertEqual(loads, [self.pool.threads[0]])
        self.assertEqual(self.tls.creator.default.source, default)


class TapWiringTests(SynchronousTestCase):
    def test_tap_passes_the_reloadable_parts_and_the_root(self):
        from edge.admin.service import AdminService
        from edge.discovery.static import StaticProvider
        from edge.dns.server import DNSService
        from edge.tap import makeService

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "edge.toml")
        with open(path, "w") as f:
            f.write(
                '[entrypoints.web]\naddress = "tcp:0:interface=127.0.0.1"\n'
                '[entrypoints.websecure]\naddress = "tcp:0:interface=127.0.0.1"\ntls = true\n'
                f'[tls]\ninternal_ca = true\nstate_dir = "{directory}/state"\n'
                '[dns]\nport = 5399\n[admin]\naddress = "tcp:0:interface=127.0.0.1"\n'
            )
        root = makeService({"config": path})
        [reload] = [s for s in root if isinstance(s, ReloadService)]
        self.assertIs(reload._holder, root)
        self.assertEqual([type(p) for p in reload.parts], [StaticProvider, AdminService, DNSService])
        self.assertIs(reload.parts[0], root.getServiceNamed("discovery").static)
        self.assertEqual(reload.staged, (root.tls,))


class RealReactorTests(TestCase):
    """Through makeService's wiring and the real reactor's thread pool."""

    @defer.inlineCallbacks
    def test_a_hangup_reads_the_file_and_certificates_off_the_reactor_thread(self):
        from edge.tap import makeService

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        os.makedirs(os.path.join(directory, "certs"))
        write(os.path.join(directory, "certs", "alpha.pem"), TestCA().bundle("alpha.lan"))
        path = os.path.join(directory, "edge.toml")
        with open(path, "w") as f:
            f.write(
                '[entrypoints.websecure]\naddress = "tcp:0:interface=127.0.0.1"\ntls = true\n'
                f'[tls]\ncertificates = "{os.path.abspath(directory)}/certs"\n'
                '[dns]\nenabled = false\n[admin]\naddress = ""\n[http]\nshutdown_grace = 1.0\n'
            )
        root = makeService({"config": path})
        [reload] = [s for s in root if isinstance(s, ReloadService)]
        reload.startService()
        self.addCleanup(reload.stopService)
        seen = []
        load, scan = _config.load, _tls_service.scan
        self.patch(_config, "load", lambda p: (seen.append(("config", threading.current_thread())), load(p))[1])
        self.patch(_tls_service, "scan", lambda *a: (seen.append(("certs", threading.current_thread())), scan(*a))[1])
        with open(path, "a") as f:
            f.write("[log]\nlevel = \"warn\"\n")
        taken = yield reload.handle_hangup()
        self.assertIs(taken, True)
        self.assertEqual([what for what, _ in seen], ["config", "certs"])
        for _, thread in seen:
            self.assertIsNot(thread, threading.main_thread())
        self.assertEqual(root.config.log.level, "warn")
