"""Shared fixtures: a scripted OpenAI-compatible server, and a guard that no kernel outlives the suite."""
import os, time
os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')
import psutil, pytest
from rlm_nb.testing import ScriptedServer, Fault


def kernel_processes():
    "ipykernel processes started by this test process."
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any('ipykernel' in part for part in p.cmdline()): out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return out


@pytest.fixture(scope='session', autouse=True)
def no_kernel_left_behind():
    yield
    deadline = time.monotonic() + 10
    while kernel_processes() and time.monotonic() < deadline: time.sleep(0.2)
    left = kernel_processes()
    assert not left, f"kernels left running after the suite: {[p.pid for p in left]}"


@pytest.fixture
def server():
    "Factory: server(script, delay=0, faults=None) starts a ScriptedServer that is stopped after the test."
    started = []
    def make(script, **kw):
        s = ScriptedServer(script, **kw).start()
        started.append(s)
        return s
    yield make
    for s in started: s.stop()
