"""The bridge end to end: kernel code -> input_request -> Bridge -> litellm -> a scripted HTTP server, and back."""
import hashlib, json, os, time
from pathlib import Path
import pytest
from rlm_nb.kernel import KernelREPL
from rlm_nb.bridge import Bridge, install_code, tool_spec, write_input
from rlm_nb.lm import LM, ScriptedLM, CompletionCache
from rlm_nb.testing import Fault

TOOL_CALLS = []

def add(a, b=1):
    """Add two numbers on the host."""
    TOOL_CALLS.append((a, b))
    return a + b

def boom():
    """Always fails."""
    raise ValueError('tool exploded')

TOOLS = [add, boom]


@pytest.fixture(scope='module')
def kernel():
    "A kernel with the bridge installed; each test passes its own Bridge as on_request."
    k = KernelREPL(startup_code=install_code({'inputs': [], 'tools': [tool_spec(t) for t in TOOLS]})).start()
    try: yield k
    finally: k.shutdown()


def echo(body): return 'echo:' + body['messages'][-1]['content']

def sub(srv, **kw): return LM('openai/sub', api_base=srv.url, **kw)


def run(kernel, code, bridge=None, **kw):
    r = kernel.execute(code, on_request=bridge, timeout=kw.pop('timeout', 30), **kw)
    assert r.status in ('ok', 'error'), r.text
    return r


# ---------------------------------------------------------------- sub-model calls

def test_llm_query_round_trips_and_is_recorded(kernel, server):
    srv = server(['four'])
    bridge = Bridge(sub(srv))
    bridge.begin_cell(1, 0)
    r = run(kernel, 'answer = llm_query("What is 2+2?")\nprint(answer)', bridge)
    assert r.ok and r.text == 'four\n'
    assert srv.requests[0]['body']['messages'] == [{'role': 'user', 'content': 'What is 2+2?'}]
    [c] = bridge.end_cell()
    assert (c.kind, c.prompt, c.response, c.model, c.error, c.cached) == ('llm', 'What is 2+2?', 'four', 'openai/sub', None, False)
    assert (c.iteration, c.cell) == (1, 0)
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0 and c.usage.calls == 1
    assert c.latency > 0
    assert bridge.end_cell() == [] # the records were handed over once


def test_llm_query_batched_answers_in_order_concurrently(kernel, server):
    srv = server(echo, delay=0.5)
    r = run(kernel, 'print(llm_query_batched([f"p{i}" for i in range(8)]))', Bridge(sub(srv), concurrency=8))
    assert r.text == repr([f'echo:p{i}' for i in range(8)]) + '\n'
    assert srv.max_in_flight >= 4


def test_llm_query_batched_respects_concurrency_limit(kernel, server):
    srv = server(echo, delay=0.3)
    bridge = Bridge(sub(srv), concurrency=2)
    r = run(kernel, 'print(llm_query_batched([f"p{i}" for i in range(6)]))', bridge)
    assert r.text == repr([f'echo:p{i}' for i in range(6)]) + '\n'
    assert srv.max_in_flight <= 2
    calls = bridge.end_cell()
    assert len(calls) == 6 and len({c.batch for c in calls}) == 1 and calls[0].batch is not None


def test_sub_model_failure_raises_bridge_error_in_kernel(kernel, server):
    srv = server(lambda body: Fault(400, message='context length exceeded'))
    bridge = Bridge(sub(srv))
    r = run(kernel, 'llm_query("too long")', bridge)
    assert r.error['ename'] == 'BridgeError'
    assert 'context length exceeded' in r.error['evalue']
    assert len(srv.requests) == 1 # a 400 is not retried
    [c] = bridge.end_cell()
    assert 'context length exceeded' in c.error and c.response is None


def test_batched_failure_names_the_failed_item(kernel, server):
    srv = server(lambda body: Fault(400, message='bad item') if body['messages'][-1]['content'] == 'p2' else 'fine')
    r = run(kernel, 'llm_query_batched(["p0", "p1", "p2", "p3"])', Bridge(sub(srv)))
    assert r.error['ename'] == 'BridgeError'
    assert '1 of 4' in r.error['evalue'] and 'item 2' in r.error['evalue'] and 'bad item' in r.error['evalue']


@pytest.mark.parametrize('arg', ['123', '["a", "b"]'])
def test_llm_query_with_non_str_prompt_points_to_batched(kernel, arg):
    r = run(kernel, f'llm_query({arg})')
    assert r.error['ename'] == 'TypeError' and 'llm_query_batched' in r.error['evalue']


@pytest.mark.parametrize('call', ['input("your name? ")', 'getpass.getpass()'])
def test_input_and_getpass_fail_fast_in_every_cell(kernel, call):
    for _ in range(2):
        r = kernel.execute(f'import getpass\n{call}', timeout=20)
        assert r.status == 'error', r.text
        assert r.error['ename'] == 'RuntimeError' and 'not available' in r.error['evalue']


def test_interrupted_sub_call_leaves_no_stale_reply(server):
    slow, fast = server(lambda b: 'slow answer', delay=30), server(lambda b: 'fast answer')
    with KernelREPL(startup_code=install_code({'inputs': [], 'tools': []})) as k:
        t = time.monotonic()
        r = k.execute('a = llm_query("wait for me")', on_request=Bridge(sub(slow)), timeout=1)
        assert time.monotonic() - t < 15
        assert r.status == 'timeout' and not r.restarted
        r = k.execute('print(llm_query("quick"))', on_request=Bridge(sub(fast)), timeout=10)
        assert r.status == 'ok', r.text
        assert r.text == 'fast answer\n'


def test_llm_query_from_threads(kernel, server):
    srv = server(echo)
    r = run(kernel, 'import threading\nres = [None] * 4\n'
                    'def work(i):\n    try: res[i] = llm_query(f"t{i}")\n    except Exception as e: res[i] = repr(e)\n'
                    'ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]\n'
                    '[t.start() for t in ts]; [t.join() for t in ts]\nprint(res)', Bridge(sub(srv)))
    assert r.text == repr([f'echo:t{i}' for i in range(4)]) + '\n'
    assert len(srv.requests) == 4


def test_thread_outliving_its_cell_does_not_wedge_later_calls(kernel, server):
    "A thread's llm_query sent after its cell ended is answered by the next cell's loop, not left blocking the lock."
    srv = server(echo)
    bridge = Bridge(sub(srv))
    run(kernel, 'import threading, time\nlate = []\n'
                'def later():\n    time.sleep(0.5)\n    late.append(llm_query("from a thread"))\n'
                'threading.Thread(target=later).start()', bridge)
    time.sleep(1.5)  # the thread asks while no cell is running, so its request carries the finished cell's id
    r = run(kernel, 'print(llm_query("from the cell"), late)', bridge, timeout=10)
    assert r.status == 'ok', r.text
    assert r.text == "echo:from the cell ['echo:from a thread']\n"


# ---------------------------------------------------------------- tools

def test_tool_call_runs_on_the_host(kernel):
    TOOL_CALLS.clear()
    bridge = Bridge(ScriptedLM([]), tools=TOOLS)
    r = run(kernel, 'print(add(2, b=3))', bridge)
    assert r.ok and r.text == '5\n'
    assert TOOL_CALLS == [(2, 3)]
    [c] = bridge.end_cell()
    assert c.kind == 'tool' and c.response == '5' and 'add' in c.prompt


def test_tool_exception_is_readable_in_kernel(kernel):
    r = run(kernel, 'boom()', Bridge(ScriptedLM([]), tools=TOOLS))
    assert r.error['ename'] == 'BridgeError'
    assert 'boom' in r.error['evalue'] and 'tool exploded' in r.error['evalue']


def test_tool_rejects_non_json_arguments(kernel):
    TOOL_CALLS.clear()
    r = run(kernel, 'add(object())', Bridge(ScriptedLM([]), tools=TOOLS))
    assert r.error['ename'] == 'TypeError' and 'JSON' in r.error['evalue']
    assert TOOL_CALLS == []


def test_tool_stub_documents_the_tool(kernel):
    r = run(kernel, 'help(add)')
    assert 'Add two numbers on the host.' in r.text
    assert '(a, b=1)' in r.text


# ---------------------------------------------------------------- FINAL, FINAL_VAR, SHOW_VARS

def finals(msgs): return [m['data'] for m in msgs if m.get('data', {}).get('op') == 'final']

def test_FINAL_sends_the_answer_to_the_host(kernel):
    msgs = []
    r = run(kernel, 'FINAL("the answer is 42")', on_comm=msgs.append)
    assert r.ok
    [f] = finals(msgs)
    assert f['answer'] == 'the answer is 42' and f['source'] == 'FINAL'


def test_FINAL_VAR_sends_the_variable_value(kernel):
    msgs = []
    r = run(kernel, 'result_rows = [1, "two", {"three": 3}]\nFINAL_VAR("result_rows")', on_comm=msgs.append)
    assert r.ok
    [f] = finals(msgs)
    assert json.loads(f['answer']) == [1, 'two', {'three': 3}]
    assert (f['source'], f['var'], f['type']) == ('FINAL_VAR', 'result_rows', 'list')


def test_FINAL_VAR_of_missing_variable_lists_the_variables(kernel):
    msgs = []
    r = run(kernel, 'present_var = 1\nFINAL_VAR("missing_var")', on_comm=msgs.append)
    assert r.error['ename'] == 'NameError'
    assert 'missing_var' in r.error['evalue'] and 'present_var' in r.error['evalue']
    assert finals(msgs) == []


def test_FINAL_VAR_of_a_value_is_a_type_error(kernel):
    r = run(kernel, 'FINAL_VAR(42)')
    assert r.error['ename'] == 'TypeError' and 'FINAL(' in r.error['evalue']


def test_SHOW_VARS_lists_user_variables_only(kernel):
    r = run(kernel, 'shown_list = [1, 2, 3]\nshown_text = "abc"\nSHOW_VARS()')
    names = [line.split()[0] for line in r.text.splitlines() if line.strip()]
    assert 'shown_list' in names and 'shown_text' in names
    assert 'len 3' in r.text
    for hidden in ('llm_query', 'llm_query_batched', 'rlm_query', 'FINAL', 'FINAL_VAR', 'SHOW_VARS', 'add', 'boom'):
        assert hidden not in names


# ---------------------------------------------------------------- inputs

def digest(v):
    b = v if isinstance(v, bytes) else v.encode() if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False).encode()
    return [type(v).__name__, hashlib.sha256(b).hexdigest()]

DIGEST_IN_KERNEL = '''
import hashlib, json
def _digest(v):
    b = v if isinstance(v, bytes) else v.encode() if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False).encode()
    return [type(v).__name__, hashlib.sha256(b).hexdigest()]
print(json.dumps({n: _digest(globals()[n]) for n in NAMES}))
'''

def test_inputs_load_equal_to_the_originals(tmp_path):
    doc = tmp_path/'doc.txt'
    doc.write_bytes('file line 1\r\nlíne 2 ✓\n'.encode())
    values = {'text': 'héllo wörld ✓\r\nline two\r\n' * 700_000, # longer than one write chunk
              'items': [1, 'two', None, {'k': [1.5, True]}],
              'table': {'a': 1, 'ü': [True, None], 'nested': {'x': 'y'}},
              'blob': bytes(range(256)) * 64,
              'doc': doc}
    specs = [write_input(v, tmp_path, name) for name, v in values.items()]
    expected = {n: digest(doc.read_bytes().decode() if isinstance(v, Path) else v) for n, v in values.items()}
    with KernelREPL(startup_code=install_code({'inputs': specs, 'tools': []}), ro_paths=[s['path'] for s in specs]) as k: # as RLM mounts them
        r = k.execute(f'NAMES = {list(values)!r}' + DIGEST_IN_KERNEL, timeout=60)
    assert r.ok, r.text
    assert json.loads(r.text) == expected


# ---------------------------------------------------------------- budget and cache

def test_budget_refusal_reaches_the_kernel(kernel, server):
    srv, asked = server(echo), []
    bridge = Bridge(sub(srv), allow=lambda n, calls, usage: asked.append(n) or 'max_llm_calls')
    r = run(kernel, 'llm_query_batched(["a", "b", "c"])', bridge)
    assert r.error['ename'] == 'BridgeError' and 'budget exhausted' in r.error['evalue']
    assert 'max_llm_calls' in r.error['evalue']
    assert bridge.refused == 'max_llm_calls' and asked == [3]
    r = run(kernel, 'llm_query("a")', bridge)
    assert r.error['ename'] == 'BridgeError' and 'budget exhausted' in r.error['evalue']
    assert asked == [3, 1] and srv.requests == []


def test_budget_counts_the_calls_already_made_in_the_cell(kernel, server):
    srv = server(echo)
    bridge = Bridge(sub(srv), allow=lambda n, calls, usage: 'max_llm_calls' if calls + n > 2 else None)
    r = run(kernel, 'got = []\nfor p in "abc": got.append(llm_query(p))', bridge)
    assert r.error['ename'] == 'BridgeError' and 'budget exhausted' in r.error['evalue']
    assert run(kernel, 'print(got)').text == "['echo:a', 'echo:b']\n"
    assert len(srv.requests) == 2 and bridge.refused == 'max_llm_calls'


def test_cache_answers_a_repeated_prompt_without_a_request(kernel, server):
    srv = server(echo)
    bridge = Bridge(sub(srv), cache=CompletionCache())
    r = run(kernel, 'a = llm_query("same")\nb = llm_query("same")\nprint(a, b)', bridge)
    assert r.text == 'echo:same echo:same\n'
    first, second = bridge.end_cell()
    assert (first.cached, second.cached) == (False, True)
    assert second.response == first.response
    assert len(srv.requests) == 1
