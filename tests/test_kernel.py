"""KernelREPL against real ipykernel processes: outputs, timeouts, crashes, restarts, isolation and cleanup."""
import json, os, signal, subprocess, sys, time, textwrap
import nbformat, psutil, pytest
from nbformat.v4 import new_code_cell, new_notebook
from rlm_nb.kernel import KernelREPL, KernelDied


@pytest.fixture(scope='module')
def repl():
    "One kernel for the tests that leave it healthy."
    k = KernelREPL().start()
    try: yield k
    finally: k.shutdown()


def kernel_pid(k:KernelREPL) -> int: return k.km.provisioner.process.pid

def gone(pid:int, wait:float=10) -> bool:
    "True once `pid` no longer exists (or is a zombie nobody reaped)."
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE: return True
        except psutil.NoSuchProcess: return True
        time.sleep(0.1)
    return False

def validate(outputs, execution_count=None):
    "Raise unless `outputs` make a valid nbformat v4 code cell."
    nbformat.validate(new_notebook(cells=[new_code_cell('', outputs=outputs, execution_count=execution_count)]))

def errors(r): return [o for o in r.outputs if o['output_type'] == 'error']


# ---------------------------------------------------------------- outputs

def test_outputs_are_valid_nbformat_of_every_kind(repl):
    r = repl.execute('import sys\nfrom IPython.display import HTML, display\n'
                     'print("to stdout")\nprint("to stderr", file=sys.stderr)\n'
                     'display(HTML("<b>bold</b>"))\n6 * 7')
    assert r.status == 'ok' and r.ok and r.error is None
    assert [o['output_type'] for o in r.outputs] == ['stream', 'stream', 'display_data', 'execute_result']
    out, err, disp, res = r.outputs
    assert (out['name'], out['text']) == ('stdout', 'to stdout\n')
    assert (err['name'], err['text']) == ('stderr', 'to stderr\n')
    assert disp['data']['text/html'] == '<b>bold</b>'
    assert res['data']['text/plain'] == '42'
    assert isinstance(r.execution_count, int) and res['execution_count'] == r.execution_count
    validate(r.outputs, r.execution_count)


def test_error_output_has_name_value_traceback_and_plain_text(repl):
    r = repl.execute('def f(): return 1/0\nf()')
    assert r.status == 'error' and not r.ok
    assert r.error == {'ename': 'ZeroDivisionError', 'evalue': 'division by zero'}
    [e] = errors(r)
    assert e['ename'] == 'ZeroDivisionError' and e['traceback']
    assert any('\x1b[' in line for line in e['traceback']) # the kernel colours it...
    assert '\x1b' not in r.text # ...the model reads plain text
    assert 'ZeroDivisionError: division by zero' in r.text and 'f()' in r.text
    validate(r.outputs, r.execution_count)


def test_execution_count_increases_per_cell(repl):
    a, b = repl.execute('1'), repl.execute('2')
    assert b.execution_count == a.execution_count + 1


def test_consecutive_prints_merge_into_one_stream_output(repl):
    r = repl.execute('import sys, time\n'
                     'print("a", flush=True); time.sleep(0.2); print("b", flush=True); time.sleep(0.2); print("c", flush=True)\n'
                     'print("e", file=sys.stderr, flush=True); time.sleep(0.2); print("d", flush=True)')
    assert [(o['name'], o['text']) for o in r.outputs] == [('stdout', 'a\nb\nc\n'), ('stderr', 'e\n'), ('stdout', 'd\n')]
    assert r.text == 'a\nb\nc\ne\nd\n'


def test_on_output_streams_while_the_cell_runs(repl):
    # The cell waits for a file that only the on_output callback creates: it can finish only if
    # its first output reached the host while it was still running.
    go = os.path.join(repl.cwd, 'go')
    events = []
    def on_output(o):
        events.append(o.get('text'))
        if o.get('text') == 'ping\n': open(go, 'w').close()
    r = repl.execute('import os, time\nprint("ping", flush=True)\n'
                     'while not os.path.exists("go"): time.sleep(0.05)\nprint("pong")', on_output=on_output, timeout=20)
    events.append('returned')
    assert r.status == 'ok', r.text
    assert events == ['ping\n', 'pong\n', 'returned']


# ---------------------------------------------------------------- timeouts and interrupts

def test_timeout_interrupts_the_cell_and_keeps_state(repl):
    repl.execute('kept = "still here"')
    t = time.monotonic()
    r = repl.execute('import time; time.sleep(30)', timeout=1)
    assert time.monotonic() - t < 20
    assert r.status == 'timeout' and not r.restarted
    names = [e['ename'] for e in errors(r)]
    assert 'KeyboardInterrupt' in names and 'CellTimeout' in names
    assert '1s limit' in r.text
    validate(r.outputs)
    assert repl.execute('print(kept)').text == 'still here\n'


def test_host_keyboard_interrupt_interrupts_kernel_and_reraises(repl):
    repl.execute('survivor = 7')
    def on_output(o): raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        repl.execute('print("started", flush=True)\nimport time; time.sleep(30)', on_output=on_output)
    # if the kernel had not been interrupted, this cell would queue behind the 30 s sleep and time out
    r = repl.execute('print(survivor)', timeout=20)
    assert r.status == 'ok' and r.text == '7\n'


def test_cell_ignoring_sigint_gets_kernel_restarted():
    with KernelREPL(interrupt_grace=1) as k:
        k.execute('before = 1')
        old_pid = kernel_pid(k)
        t = time.monotonic()
        r = k.execute('import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)', timeout=1)
        assert time.monotonic() - t < 20
        assert r.status == 'timeout' and r.restarted
        assert errors(r)[-1]['ename'] == 'CellTimeout' and 'restarted' in r.text
        validate(r.outputs)
        assert k.is_alive and kernel_pid(k) != old_pid and gone(old_pid)
        assert k.execute('before').error['ename'] == 'NameError'
        assert k.execute('print(1 + 1)').text == '2\n'


def test_killed_kernel_reports_died_and_restart_recovers():
    with KernelREPL() as k:
        k.execute('x = 1')
        t = time.monotonic()
        r = k.execute('import os; os.kill(os.getpid(), 9)', timeout=60)
        assert time.monotonic() - t < 20
        assert r.status == 'died' and not r.ok
        assert r.outputs[-1]['output_type'] == 'error' and r.outputs[-1]['ename'] == 'KernelDied'
        validate(r.outputs)
        assert not k.is_alive
        with pytest.raises(KernelDied):
            k.execute('1')
        k.restart()
        assert k.is_alive
        assert k.execute('x').error['ename'] == 'NameError'
        assert k.execute('print("back")').text == 'back\n'


# ---------------------------------------------------------------- lifecycle and isolation

def test_shutdown_is_idempotent_and_leaves_nothing_behind():
    k = KernelREPL().start()
    pid, cwd = kernel_pid(k), k.cwd
    assert psutil.pid_exists(pid) and os.path.isdir(cwd)
    k.shutdown()
    k.shutdown()
    assert not k.is_alive
    assert not os.path.exists(cwd)
    assert gone(pid)


@pytest.mark.parametrize('sandbox', [False, 'auto'])
def test_kernel_sees_no_secrets_and_runs_in_its_own_temp_dir(monkeypatch, tmp_path, sandbox):
    secrets = ['OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'AWS_SECRET_ACCESS_KEY', 'MY_SERVICE_TOKEN']
    for name in secrets: monkeypatch.setenv(name, 'sk-secret-value-1234567890')
    monkeypatch.setenv('RLM_NB_HARMLESS', 'visible')
    monkeypatch.chdir(tmp_path)
    with KernelREPL(sandbox=sandbox, env={'RLM_NB_GIVEN': 'given'}) as k:
        r = k.execute(f'import os, json\nprint(json.dumps({{"seen": [n for n in {secrets!r} if n in os.environ], '
                      '"path": os.environ.get("PATH"), "harmless": os.environ.get("RLM_NB_HARMLESS"), '
                      '"given": os.environ.get("RLM_NB_GIVEN"), '
                      '"values": [v for v in os.environ.values() if "sk-secret" in v], "cwd": os.getcwd()}))')
        seen = json.loads(r.text)
        cwd, sandboxed = k.cwd, k.sandboxed
    assert seen['seen'] == [] and seen['values'] == []
    assert seen['path'] == os.environ['PATH'] and seen['given'] == 'given'
    assert seen['harmless'] == (None if sandboxed else 'visible') # a sandbox starts from a cleared environment
    assert os.path.realpath(seen['cwd']) == os.path.realpath(cwd) != os.path.realpath(tmp_path)
    assert not os.path.exists(cwd)


def test_startup_code_runs_on_start_and_after_restart():
    with KernelREPL(startup_code='import os\nBOOT = os.getpid()') as k:
        first = k.execute('print(BOOT == os.getpid())')
        assert first.text == 'True\n'
        k.restart()
        assert k.execute('print(BOOT == os.getpid())').text == 'True\n'


def test_memory_limit_turns_a_huge_allocation_into_memory_error():
    with KernelREPL(memory_limit=2 * 1024**3) as k:
        r = k.execute('b = bytearray(4 * 1024**3)')
        assert r.status == 'error' and r.error['ename'] == 'MemoryError'
        assert k.is_alive
        assert k.execute('print(len(bytearray(10 * 1024**2)))').text == f'{10 * 1024**2}\n'


# ---------------------------------------------------------------- the host process ends

def run_host(script:str, send=None):
    "Run `script` in a fresh Python; it prints the kernel pid and cwd as its first line. Returns (pid, cwd, proc)."
    p = subprocess.Popen([sys.executable, '-c', textwrap.dedent(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        pid, cwd = json.loads(line)
        if send is not None: p.send_signal(send)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    return pid, cwd, p


PRINT_KERNEL = 'print(__import__("json").dumps([k.km.provisioner.process.pid, k.cwd]), flush=True)'

def test_kernel_is_shut_down_at_interpreter_exit():
    pid, cwd, p = run_host(f'''
        from rlm_nb.kernel import KernelREPL
        k = KernelREPL().start()
        {PRINT_KERNEL}
        ''')
    assert p.returncode == 0
    assert gone(pid), f'kernel {pid} outlived its host'
    assert not os.path.exists(cwd)


def test_kernel_is_shut_down_when_with_block_raises():
    pid, cwd, p = run_host(f'''
        from rlm_nb.kernel import KernelREPL
        with KernelREPL() as k:
            {PRINT_KERNEL}
            raise ValueError("boom")
        ''')
    assert p.returncode != 0
    assert gone(pid), f'kernel {pid} outlived its host'
    assert not os.path.exists(cwd)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['ctrl-c', 'sigterm'])
def test_kernel_is_shut_down_when_host_is_signalled_mid_cell(sig):
    # the host reports the kernel only once the cell is running, so the signal lands inside execute()
    pid, cwd, p = run_host(f'''
        from rlm_nb.kernel import KernelREPL
        k = KernelREPL().start()
        k.execute('print("running", flush=True); import time; time.sleep(60)', on_output=lambda o: {PRINT_KERNEL})
        ''', send=sig)
    assert p.returncode != 0
    assert gone(pid), f'kernel {pid} outlived its host'
    assert not os.path.exists(cwd)
