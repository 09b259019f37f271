"""Remote kernels on a real `jupyter server` and a real `jupyter kernelgateway`, started on 127.0.0.1 with tokens."""
import json, os, re, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path
import pytest
from rlm_nb.core import RLM
from rlm_nb.remote import JupyterServer, RemoteKernel, RemoteKernelError, serve_jupyter, TOKEN_ENV, EG_ENV
from rlm_nb.notebook import export, replay
from helpers import repl, script, rlm

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope='module', params=['server', 'gateway', 'enterprise'])
def jupyter(request):
    "A real Jupyter Server / Kernel Gateway / Enterprise Gateway for this module, with its default limits."
    if request.param == 'enterprise' and not os.environ.get(EG_ENV):
        why = (f"Enterprise Gateway pins old jupyter packages, so it needs its own venv: python -m venv .venv-eg && "
               f".venv-eg/bin/pip install jupyter_enterprise_gateway && export {EG_ENV}=$PWD/.venv-eg/bin/jupyter")
        if os.environ.get('CI'): pytest.fail(f"CI must test Enterprise Gateway: {why}")
        pytest.skip(why)
    with serve_jupyter(request.param) as srv:
        srv.kind = request.param
        yield srv


@pytest.fixture(autouse=True)
def no_kernel_left_on_the_server(request):
    yield
    if 'jupyter' in request.fixturenames:
        srv = request.getfixturevalue('jupyter')
        assert srv.kernels() == [], f"kernels left on the {srv.kind}"


def remote_rlm(http, jupyter, **kw) -> RLM: return rlm(http, kernel=jupyter, **kw)


def test_needle_session_with_batched_subcalls_runs_on_the_remote_kernel(server, jupyter, tmp_path):
    needle = 'the launch code is PLUM-7731'
    context = '\n'.join(f'line {i}: nothing here' for i in range(200_000))
    context = context[:len(context) // 2] + '\n' + needle + '\n' + context[len(context) // 2:]
    root = [repl("""
                import os
                print(len(context), os.getcwd() != %r)
                chunks = [context[i:i + 500_000] for i in range(0, len(context), 500_000)]
                answers = llm_query_batched([f'launch code in this? {c}' for c in chunks])
                print(answers)
             """ % os.getcwd()),
            repl("FINAL([a for a in answers if a != 'none'][0])")]
    http = server(script(root, lambda p: 'PLUM-7731' if needle in p else 'none'), delay=0.2)
    trace = tmp_path/'run.jsonl'
    res = remote_rlm(http, jupyter, trace=trace)("What is the launch code?", context=context)
    assert res.stop_reason == 'final' and res.answer == 'PLUM-7731'
    first = res.session.iterations[0].cells[0]
    assert first.text.startswith(f'{len(context)} True') # the kernel has the context, in its own directory
    assert len(res.session.subcalls) == len(context) // 500_000 + 1 and http.max_in_flight >= 4
    assert res.session.settings['kernel'] == jupyter.url
    assert jupyter._token not in trace.read_text()
    nb = export(res, tmp_path/'remote.ipynb')
    assert jupyter._token not in Path(nb).read_text()
    assert replay(nb).ok # a remote session replays on a local kernel


def test_a_cell_timeout_interrupts_and_the_kernel_keeps_its_state(server, jupyter):
    http = server(script([repl("keep = 'still here'"), repl("import time\ntime.sleep(60)"), repl("FINAL(keep)")]))
    res = remote_rlm(http, jupyter, cell_timeout=1)("Wait?", context='x')
    assert res.session.iterations[1].cells[0].status == 'timeout'
    assert res.stop_reason == 'final' and res.answer == 'still here'


def test_a_kernel_killed_mid_cell_is_reported_and_its_inputs_are_loaded_again(server, jupyter):
    http = server(script([repl("mine = 5"), repl("import os, signal\nprint('going', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)"),
                          repl("print('mine' in globals())\nFINAL(context.upper())")]))
    res = remote_rlm(http, jupyter)("Shout it", context='abcdef')
    died = res.session.iterations[1].cells[0]
    assert died.status == 'died' and 'KernelDied' in died.text
    after = res.session.iterations[2].cells[0]
    assert after.status == 'ok' and after.text.strip() == 'False'
    assert res.stop_reason == 'final' and res.answer == 'ABCDEF'


def test_a_one_gigabyte_input_travels_over_the_websocket(server, jupyter):
    context = 'abcdefgh' * (1 << 27) + 'THE END'
    http = server(script([repl("print(len(context), context[-7:], context.count('h', 0, 1000))"), repl("FINAL(len(context))")]))
    res = remote_rlm(http, jupyter)("How long?", context=context)
    assert res.session.iterations[0].cells[0].text.strip() == f'{len(context)} THE END 125'
    assert res.answer == str(len(context))
    del context


FLOOD = "for i in range(5000): print(i, flush=True)" # a message each: past the default 1000 messages a second


def test_the_iopub_rate_limit_is_detected_and_explained(jupyter):
    "Output is never lost silently: all of it arrives, or the cell says the server dropped some."
    with RemoteKernel(jupyter) as k:
        r = k.execute(FLOOD)
    lines = [l for l in r.text.splitlines() if l.isdigit()]
    if jupyter.kind == 'enterprise': # Enterprise Gateway does not limit by default
        assert lines == [str(i) for i in range(5000)] and 'MessagesDropped' not in r.text
    else:
        assert len(lines) < 5000 and 'MessagesDropped' in r.text and 'limit_rate=False' in r.text


def test_without_the_rate_limit_nothing_is_dropped():
    with serve_jupyter('server', limit_rate=False) as srv, RemoteKernel(srv) as k:
        r = k.execute(FLOOD)
        assert 'MessagesDropped' not in r.text and r.text.split() == [str(i) for i in range(5000)]


def test_a_dropped_socket_reconnects_to_the_same_kernel(jupyter):
    with RemoteKernel(jupyter) as k:
        k.execute("kept = 41")
        k.ws.close() # as the server does to a client that stopped reading
        r = k.execute("print(kept + 1)", timeout=30)
        assert r.ok and r.text.strip() == '42'


def test_a_kernel_deleted_from_outside_is_replaced_with_its_inputs(jupyter, tmp_path):
    data = tmp_path/'data.txt'; data.write_text('payload')
    with RemoteKernel(jupyter) as k:
        spec, = k.put_inputs([{'name': 'data', 'path': str(data), 'format': 'text'}])
        old = k.id
        jupyter.rest('DELETE', f'/api/kernels/{k.id}')
        r = k.execute('1', timeout=30)
        assert r.status == 'died' and 'deleted' in r.text
        k.restart()
        assert k.id != old
        assert k.execute(f"print(open({spec['path']!r}).read())").text.strip() == 'payload'


def test_a_wrong_token_and_a_missing_server_fail_in_one_line(jupyter):
    with pytest.raises(RemoteKernelError, match='refused the token'):
        JupyterServer(jupyter.url, token='wrong').kernel().start()
    with pytest.raises(ValueError, match=TOKEN_ENV):
        RLM('openai/x', kernel=jupyter.url + '/?token=abc')


CTRL_C = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from helpers import repl, script, rlm
    from rlm_nb.testing import ScriptedServer
    http = ScriptedServer(script([repl("print('started', flush=True)\\nimport time\\ntime.sleep(120)")])).start()
    res = rlm(http, kernel={url!r})("Wait", context='x')
    print('STOP', res.stop_reason, flush=True)
""")


def test_ctrl_c_on_the_host_deletes_the_remote_kernel(jupyter, tmp_path):
    env = {**os.environ, TOKEN_ENV: jupyter._token, 'PYTHONUNBUFFERED': '1', 'RLM_NB_KERNEL_NAME': jupyter.kernel_name,
           'KERNEL_USERNAME': jupyter.username}
    code = CTRL_C.format(tests=str(Path(__file__).parent), url=jupyter.url)
    p = subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and not jupyter.kernels(): time.sleep(0.2)
        assert jupyter.kernels(), 'the session never started a kernel on the server'
        time.sleep(2)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert 'STOP interrupted' in out, out[-2000:]
    assert jupyter.kernels() == []


def test_the_bench_keeps_at_most_concurrency_remote_kernels_and_deletes_them_all(jupyter, tmp_path):
    from rlm_nb import bench
    tasks = bench.make_tasks('niah', sizes=[2000], n=4, seed=1)
    peak, done = [0], threading.Event()
    def watch():
        while not done.is_set():
            try: peak[0] = max(peak[0], len(jupyter.kernels()))
            except RemoteKernelError: pass # jupyter_server answers 500 to a list taken while a kernel is being deleted
            time.sleep(0.05)
    t = threading.Thread(target=watch); t.start()
    try: attempts = bench.run(tasks, ['rlm'], model='scripted', out=tmp_path/'run', concurrency=2, kernel=jupyter, progress=False)
    finally: done.set(); t.join()
    assert len(attempts) == 4 and all(a.score == 1 for a in attempts), [(a.stop_reason, a.error) for a in attempts]
    assert 1 <= peak[0] <= 2


def test_sub_calls_are_filed_on_their_cells_whatever_the_kernels_clock(server):
    "A kernel elsewhere has its own clock: a request names its cell by the cell_id the host gave it, not by time."
    http = server(script([repl("import time\n_real = time.time\ntime.time = lambda: _real() - 3600 # an hour behind"),
                          repl("a = llm_query('one')") + "\n" + repl("b = llm_query_batched(['two', 'three'])"),
                          repl("FINAL(a)")]))
    res = rlm(http)("Ask", context='x')
    cells = res.session.iterations[1].cells
    assert [[c.prompt for c in cell.subcalls] for cell in cells] == [['one'], ['two', 'three']]


def test_quick_acks_on_our_side_and_nodelay_on_the_servers_side_both_run_cells(monkeypatch):
    "The two fixes for the 44 ms Nagle stall (their speed is measured in benchmarks/bench_bridge.py --remote-only)."
    import socket, rlm_nb.remote as remote
    with serve_jupyter('server', nodelay=True) as srv:
        with RemoteKernel(srv) as k:
            assert type(k.ws.socket) is remote._QuickAckSocket
            assert k.execute('6 * 7').outputs[0]['data']['text/plain'] == '42'
        monkeypatch.setattr(remote, '_QuickAckSocket', socket.socket)
        with RemoteKernel(srv) as k:
            assert type(k.ws.socket) is socket.socket and k.execute('6 * 7').ok
        assert 'NoDelayConnection' in ' '.join(srv.process.args)


def test_a_taken_port_fails_instead_of_moving_to_another():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen()
        with pytest.raises(RemoteKernelError, match='did not start'):
            with serve_jupyter('server', port=s.getsockname()[1], startup_timeout=30): pass


def test_a_gateway_that_does_not_list_kernels_says_which_setting_to_change():
    with serve_jupyter('gateway', list_kernels=False) as kg:
        with pytest.raises(RemoteKernelError, match='list_kernels=True'): kg.kernels()
        with RemoteKernel(kg) as k: assert k.execute('1').ok # listing is not needed to run a kernel


BENCH_CTRL_C = textwrap.dedent("""
    from rlm_nb import bench
    tasks = bench.make_tasks('oolong', sizes=[4000], n=6, seed=3)
    print('starting', flush=True)
    bench.run(tasks, ['rlm'], model='scripted', out={out!r}, concurrency=2, kernel={url!r}, progress=False)
    print('FINISHED', flush=True)
""")


def test_ctrl_c_on_a_bench_leaves_no_kernel_on_the_server(jupyter, tmp_path):
    env = {**os.environ, TOKEN_ENV: jupyter._token, 'RLM_NB_KERNEL_NAME': jupyter.kernel_name, 'KERNEL_USERNAME': jupyter.username}
    p = subprocess.Popen([sys.executable, '-c', BENCH_CTRL_C.format(out=str(tmp_path/'run'), url=jupyter.url)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and not jupyter.kernels(): time.sleep(0.1)
        assert jupyter.kernels(), 'the bench never started a kernel on the server'
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None: p.kill()
    assert 'FINISHED' not in out, out[-2000:]
    assert jupyter.kernels() == []


def test_a_server_that_goes_away_ends_the_cell_instead_of_hanging():
    with serve_jupyter('server') as srv:
        k = RemoteKernel(srv).start()
        try:
            srv.process.kill(); srv.process.wait()
            r = k.execute('1', timeout=60)
            assert r.status == 'died' and 'lost' in r.text
            with pytest.raises(RemoteKernelError, match='cannot reach the kernel server'): k.restart()
        finally: k.shutdown()


def test_the_bench_cli_places_its_kernels_on_the_server(jupyter, tmp_path):
    env = {**os.environ, TOKEN_ENV: jupyter._token, 'RLM_NB_KERNEL_NAME': jupyter.kernel_name, 'KERNEL_USERNAME': jupyter.username}
    p = subprocess.run([sys.executable, '-m', 'rlm_nb', 'bench', 'run', '--scripted', '--suite', 'niah', '--sizes', '1k', '--n', '2',
                        '--methods', 'rlm', '--concurrency', '2', '--kernel-url', jupyter.url, '--out', str(tmp_path/'run'), '-q'],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(l) for l in (tmp_path/'run'/'results.jsonl').read_text().splitlines()]
    assert len(rows) == 2 and all(r['score'] == 1 for r in rows)
    sessions = list((tmp_path/'run'/'sessions').glob('*.ipynb'))
    assert len(sessions) == 2
    assert all(json.loads(nb.read_text())['metadata']['rlm_nb']['session']['settings']['kernel'] == jupyter.url for nb in sessions)


def test_a_kernel_removes_its_private_directory_when_it_is_shut_down(jupyter, tmp_path):
    (tmp_path/'x.txt').write_text('x')
    with RemoteKernel(jupyter) as k:
        k.put_inputs([{'name': 'x', 'path': str(tmp_path/'x.txt'), 'format': 'text'}])
        where = k.cwd
        assert os.path.isfile(os.path.join(where, 'x.txt')) # the servers here share our disk
    assert not os.path.exists(where)
