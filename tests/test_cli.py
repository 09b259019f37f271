"""The `rlm-nb` console script, run as a user would: a subprocess against a scripted server on 127.0.0.1."""
import json, os, subprocess, sys, time
import pytest
from rlm_nb.events import read_trace

ROOT_REPLIES = [
    "Let me look.\n```repl\nprint(len(context)); print(context.splitlines()[0])\n```",
    "```repl\nhits = [l for l in context.splitlines() if 'ERROR' in l]\nsummary = llm_query('Summarize: ' + hits[0])\nprint(summary)\n```",
    "FINAL(disk full on db-2)",
]


def route(replies):
    "A server script: root requests (with our system prompt) get `replies` in order, sub-calls get a summary."
    it = iter(replies)
    def answer(body):
        system = body['messages'][0]['content'] if body['messages'][0]['role'] == 'system' else ''
        return next(it) if 'Recursive Language Model' in system else 'disk full on db-2'
    return answer


def rlm_nb(*args, env=None, timeout=120):
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, '-m', 'rlm_nb', *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def log_file(tmp_path):
    p = tmp_path/'big.log'
    p.write_text('\n'.join(f"{i} INFO ok" for i in range(50_000)) + '\n50000 ERROR db-2: no space left on device\n')
    return p


def test_run_finishes_against_local_server_and_writes_trace(server, log_file, tmp_path):
    srv = server(route(ROOT_REPLIES))
    trace = tmp_path/'run.jsonl'
    r = rlm_nb('run', '--model', 'openai/root', '--sub-model', 'openai/sub', '--api-base', srv.url,
               '--context', str(log_file), '--query', 'What went wrong?', '--trace', str(trace))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'disk full on db-2'
    assert 'iteration 1' in r.stderr and 'done: final' in r.stderr  # progress per iteration
    s = read_trace(trace)
    assert s.answer == 'disk full on db-2' and s.stop_reason == 'final'
    assert len(s.iterations) == 3 and len(s.subcalls) == 1
    assert s.inputs[0]['source'] == str(log_file.resolve()) or s.inputs[0]['source'] == str(log_file)
    # the root model never received the log itself
    root_sizes = [len(json.dumps(r['body']['messages'])) for r in srv.requests if r['body']['model'] == 'root']
    assert max(root_sizes) < log_file.stat().st_size / 10


def test_json_output_and_budget_exit_code(server, log_file):
    srv = server(route(["```repl\nx = 1\n```"] * 2 + ["FINAL(best guess)"]))
    r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '-c', f'logs={log_file}', '--query', 'q?',
               '--max-iterations', '2', '--json', '--quiet')
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert out['stop_reason'] == 'max_iterations' and out['answer'] == 'best guess' and out['iterations'] == 2
    assert r.stderr.strip() == ''  # --quiet


@pytest.mark.parametrize('args, env, message', [
    (['--model', 'openai/x', '--context', 'nope.txt'], {}, 'context file not found: nope.txt'),
    (['--model', 'nosuchprovider/x'], {}, 'unknown model'),
    (['--model', 'openai/gpt-4o-mini'], {'OPENAI_API_KEY': ''}, 'OPENAI_API_KEY'),
    ([], {'RLM_MODEL': ''}, 'no model'),
])
def test_bad_input_is_one_line_and_exit_2(args, env, message, log_file):
    if not any(a == '--context' for a in args): args = args + ['--context', str(log_file)]
    r = rlm_nb('run', *args, '--query', 'q?', env=env)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'Traceback' not in r.stderr


def test_help_is_fast_and_does_not_import_litellm():
    code = "import sys, rlm_nb.cli\ntry: rlm_nb.cli.main(['--help'])\nexcept SystemExit: pass\nprint('litellm' in sys.modules)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith('False'), r.stdout + r.stderr
    assert 'run' in r.stdout and 'demo' in r.stdout


def test_demo_without_model_is_a_labelled_scripted_walkthrough(tmp_path):
    trace = tmp_path/'demo.jsonl'
    r = rlm_nb('demo', '--lines', '8000', '--trace', str(trace), env={'RLM_MODEL': ''})
    assert r.returncode == 0, r.stderr
    assert 'scripted walkthrough' in r.stderr and 'expected answer' in r.stderr and '(match)' in r.stderr
    s = read_trace(trace)
    assert r.stdout.strip() == s.answer and s.answer.startswith('ORD-')
    assert len(s.subcalls) == 12  # 300 tickets in batches of 25


def test_demo_with_a_model_uses_it(server):
    from rlm_nb.cli import DEMO_ROOT_REPLIES, demo_sub_model
    replies = iter(DEMO_ROOT_REPLIES)
    srv = server(lambda body: next(replies) if body['messages'][0]['role'] == 'system' else demo_sub_model(body['messages']))
    r = rlm_nb('demo', '--lines', '8000', '--model', 'openai/local', '--api-base', srv.url)
    assert r.returncode == 0, r.stderr
    assert 'scripted walkthrough' not in r.stderr and 'asking openai/local' in r.stderr
    assert '(match)' in r.stderr
    assert len(srv.requests) == len(DEMO_ROOT_REPLIES) + 12


def test_context_path_with_equals_sign_and_bad_json_are_clean_errors(tmp_path, server):
    weird = tmp_path/'a=b.txt'
    weird.write_text('hello')
    srv = server(route(["```repl\nFINAL(data)\n```"] * 3))
    r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '-c', f'data={weird}', '--query', 'q?', '--quiet')
    assert r.returncode == 0 and r.stdout.strip() == 'hello', r.stderr  # the file is found and named `data`
    bad = tmp_path/'broken.json'
    bad.write_text('{"a": 1,')
    r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '-c', str(bad), '--query', 'q?', '--quiet')
    assert r.returncode == 2 and 'could not load the inputs' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
    for name in ('class', 'llm_query', 'len'):
        r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '-c', f'{name}={weird}', '--query', 'q?')
        assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# Found in review: each of these failed before its fix

def test_an_input_named_query_works_and_an_underscore_name_is_a_one_line_error(tmp_path, server):
    data = tmp_path/'q.txt'
    data.write_text('hello')
    srv = server(route(["```repl\nFINAL(query)\n```"]))
    r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '--context', f'query={data}', '--query', 'q?', '--quiet')
    assert r.returncode == 0 and r.stdout.strip() == 'hello', r.stderr
    for name in ('_resume', '_parent'):
        r = rlm_nb('run', '-m', 'openai/root', '--api-base', srv.url, '--context', f'{name}={data}', '--query', 'q?')
        assert r.returncode == 2, r.stderr
        assert repr(name) in r.stderr and 'underscore' in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert len(srv.requests) == 1


@pytest.mark.parametrize('text', ['[1, 2]\n', json.dumps({'type': 'session_started', 'session': {'model': 'x'}}) + '\n'],
                         ids=['not_an_object', 'session_missing_fields'])
def test_a_malformed_trace_is_a_one_line_error(tmp_path, text):
    from rlm_nb import load_session
    trace = tmp_path/'bad.jsonl'
    trace.write_text(text)
    with pytest.raises(ValueError) as e: load_session(trace)
    assert 'bad.jsonl' in str(e.value) and '\n' not in str(e.value).strip()
    out = tmp_path/'out'
    out.mkdir()
    r = rlm_nb('export', str(trace), '-o', str(out/'z.ipynb'))
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'bad.jsonl' in r.stderr and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C, SIGTERM and SIGHUP: a prompt exit with the record complete and nothing left behind

import signal, tempfile
from pathlib import Path


def _slow_batch(body):
    system = body['messages'][0]['content'] if body['messages'][0]['role'] == 'system' else ''
    if 'Recursive Language Model' in system: return "```repl\nprint(llm_query_batched(['a', 'b', 'c', 'd']))\n```"
    time.sleep(40)  # sub-calls that would hold the process for 40 s
    return 'late'


def _session_dirs_of(pid):
    out = []
    for d in Path(tempfile.gettempdir()).glob('rlm_nb-session-*'):
        try:
            if (d / '.rlm_nb-owner').read_text() == str(pid): out.append(d)
        except OSError: pass
    return out


@pytest.mark.parametrize('signals, code', [([signal.SIGINT], 130), ([signal.SIGTERM], 143), ([signal.SIGHUP], 129),
                                           ([signal.SIGINT, signal.SIGINT], 130)])
def test_a_signal_during_batched_calls_exits_promptly_with_the_trace_complete(server, log_file, tmp_path, signals, code):
    srv = server(_slow_batch)
    trace = tmp_path / 'run.jsonl'
    p = subprocess.Popen([sys.executable, '-m', 'rlm_nb', 'run', '-m', 'openai/root', '--api-base', srv.url,
                          '-c', str(log_file), '--query', 'q?', '--trace', str(trace)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (trace.exists() and 'subcall_started' in trace.read_text()):
            assert time.monotonic() < deadline and p.poll() is None, 'the batch never started'
            time.sleep(0.1)
        t = time.monotonic()
        for s in signals:
            p.send_signal(s); time.sleep(0.05)
        p.wait(timeout=30)
        took = time.monotonic() - t
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == code, p.stderr.read()
    assert took < 5, f"exit took {took:.1f}s after the signal (sub-calls still in flight must not hold it)"
    events = [json.loads(l) for l in trace.read_text().splitlines()]
    assert events[-1]['type'] == 'session_ended' and events[-1]['session']['stop_reason'] == 'interrupted'
    assert not _session_dirs_of(p.pid)


def test_export_of_an_unfinished_trace_exports_what_it_has_and_says_so(tmp_path):
    from rlm_nb import RLM, ScriptedLM
    import nbformat
    trace = tmp_path / 'cut.jsonl'
    RLM(ScriptedLM(["```repl\nprint(1)\n```", "```repl\nprint(2)\n```", "FINAL(x)"]), verbose=False, trace=trace)('q', context='c')
    trace.write_text(''.join(l + '\n' for l in trace.read_text().splitlines() if '"session_ended"' not in l))  # killed
    ctx = tmp_path / 'c.txt'; ctx.write_text('c')
    r = rlm_nb('export', str(trace), '-o', str(tmp_path / 'cut.ipynb'), '--input', f'context={ctx}')
    assert r.returncode == 0 and 'ends before its session did' in r.stderr and '3 iteration(s)' in r.stderr
    nb = nbformat.read(tmp_path / 'cut.ipynb', as_version=4)
    assert sum('## Iteration' in c.source for c in nb.cells) == 3 and 'unfinished' in nb.cells[0].source
