"""Fixtures for the Python binding's tests: a real ferryd per test module,
started on a free loopback port with --ready-file and stopped by its PID.

Each test's result is also printed as a cmocka-style line ("[       OK ]
name"), which script/summarize counts as one test case."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

FERRYD = os.environ.get("FERRYD")
FERRY_CLI = os.environ.get("FERRY_CLI")


class Broker:
    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="ferry-py-")
        self.data = os.path.join(self.dir, "data")
        self.args = list(args)
        self.proc = None
        self.addr = None
        self.log_path = os.path.join(self.dir, "ferryd.log")

    def start(self):
        ready = os.path.join(self.dir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([FERRYD, "--listen", "127.0.0.1:0", "--data", self.data,
                                      "--ready-file", ready] + self.args,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("ferryd did not start:\n" + open(self.log_path).read())
            time.sleep(0.01)
        self.addr = open(ready).read().strip()
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        if not os.environ.get("HARNESS_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def broker():
    if not FERRYD:
        pytest.fail("FERRYD is not set (meson passes it)")
    b = Broker().start()
    yield b
    b.cleanup()


@pytest.fixture
def tmpdir_path():
    d = tempfile.mkdtemp(prefix="ferry-pyt-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[-1]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        tag = {"passed": "[       OK ]", "failed": "[  FAILED  ]",
               "skipped": "[  SKIPPED ]"}[report.outcome]
        sys.__stdout__.write(f"\n{tag} {name}\n")
        sys.__stdout__.flush()
