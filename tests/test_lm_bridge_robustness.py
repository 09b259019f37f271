"""What real models, servers and model code do to the bridge: late sub-calls, sessions that end mid-batch, deadlines,
bad tools, clobbered REPL names and file inputs. Real kernels, real HTTP to a ScriptedServer."""
import json, subprocess, sys, textwrap, threading, time
from pathlib import Path
import pytest
from rlm_nb.kernel import KernelREPL
from rlm_nb.bridge import (Bridge, ABANDONED, check_tools, describe_input, install_code, tool_spec, write_input,
                           Recording, recording_units, replay_handler)
from rlm_nb.events import (EventStream, Session, Iteration, CodeCell, SessionStarted, ModelReplied, CellFinished,
                           SubCallFinished, SessionEnded)
from rlm_nb.lm import LM, ScriptedLM


def lookup(item):
    """Price of an item on the host."""
    return {'pear': 3}[item]

TOOLS = [lookup]


@pytest.fixture(scope='module')
def kernel():
    k = KernelREPL(startup_code=install_code({'inputs': [], 'tools': [tool_spec(t) for t in TOOLS]})).start()
    try: yield k
    finally: k.shutdown()


def sub(srv, **kw): return LM('openai/sub', api_base=srv.url, max_retries=0, **kw)

def slow_for(marker, seconds):
    "A server script that answers prompts containing `marker` after `seconds`, the rest at once."
    def answer(body):
        prompt = body['messages'][-1]['content']
        if marker in prompt: time.sleep(seconds)
        return 'echo:' + prompt
    return answer

def prompts(calls): return [c.prompt for c in calls]


# ---------------------------------------------------------------- 9.5: a late sub-call is filed under the cell that made it

def test_a_call_answered_after_its_cell_timed_out_is_recorded_on_that_cell(kernel, server):
    srv, seen = server(slow_for('slow', 3)), []
    events = EventStream(); events.subscribe(lambda e: seen.append(e) if isinstance(e, SubCallFinished) else None)
    bridge = Bridge(sub(srv), events)
    first = bridge.begin_cell(1, 0)
    r = kernel.execute('a = llm_query("slow question")', on_request=bridge, timeout=1)
    assert r.status == 'timeout'
    assert bridge.end_cell() is first and first == [] # still waiting for the model
    second = bridge.begin_cell(2, 0)
    r = kernel.execute('import time\nb = llm_query("quick question")\ntime.sleep(4)\nprint(b)', on_request=bridge, timeout=30)
    assert r.status == 'ok', r.text
    assert prompts(bridge.end_cell()) == ['quick question']
    assert prompts(first) == ['slow question'] and first[0].response == 'echo:slow question'
    assert (first[0].iteration, first[0].cell) == (1, 0)
    assert {e.subcall.prompt: (e.subcall.iteration, e.subcall.cell) for e in seen} == {'slow question': (1, 0), 'quick question': (2, 0)}
    # the replay of the second cell from its record asks exactly what it recorded: no ReplayMismatch
    rec = Recording(recording_units(second), 'iteration 2, block 1')
    r = kernel.execute('b = llm_query("quick question")', on_request=replay_handler(rec), timeout=30)
    assert r.ok, r.text
    rec.check()


def test_calls_from_threads_and_pools_that_outlive_their_cell_are_filed_under_it(kernel, server):
    srv = server(lambda body: 'echo:' + body['messages'][-1]['content'])
    bridge = Bridge(sub(srv))
    first = bridge.begin_cell(1, 0)
    r = kernel.execute(textwrap.dedent('''
        import threading, time
        from concurrent.futures import ThreadPoolExecutor
        pool, late = ThreadPoolExecutor(2), []
        def later(p):
            time.sleep(0.5)
            late.append(llm_query(p))
        threading.Thread(target=later, args=("from a thread",)).start()
        pool.submit(later, "from a pool job")'''), on_request=bridge, timeout=30)
    assert r.ok, r.text
    bridge.end_cell()
    time.sleep(1.5) # both ask while no cell runs; the next cell's loop answers them
    second = bridge.begin_cell(1, 1)
    r = kernel.execute('print(sorted(late), pool.submit(llm_query, "pool job of this cell").result())', on_request=bridge, timeout=30)
    assert r.ok, r.text
    bridge.end_cell()
    assert sorted(prompts(first)) == ['from a pool job', 'from a thread']
    assert prompts(second) == ['pool job of this cell'] # the same pool, reused by a later cell: filed under the later one
    assert all((c.iteration, c.cell) == (1, 0) for c in first)


# ---------------------------------------------------------------- 9.5, 9.14: the end of a session

def test_close_abandons_in_flight_calls_and_emits_nothing_after(kernel, server):
    srv, seen = server(slow_for('item', 3)), []
    events = EventStream(); events.subscribe(seen.append)
    bridge = Bridge(sub(srv), events, concurrency=2)
    calls = bridge.begin_cell(1, 0)
    r = kernel.execute('llm_query_batched([f"item {i}" for i in range(4)])', on_request=bridge, timeout=1)
    assert r.status == 'timeout'
    t = time.monotonic()
    bridge.close()
    assert time.monotonic() - t < 1 # at once, not when the model answers
    n = len(seen)
    assert [c.error for c in calls] == [ABANDONED, ABANDONED] # two were in flight; the two queued never started
    assert all((c.iteration, c.cell) == (1, 0) and c.usage.unpriced_calls == 1 for c in calls)
    assert bridge.usage.calls == 2 and bridge.usage.cost is None # they were sent: their cost is not known to be zero
    assert sum(isinstance(e, SubCallFinished) for e in seen) == 2
    time.sleep(4) # the server answers the abandoned calls now
    assert len(seen) == n and [c.error for c in calls] == [ABANDONED, ABANDONED]
    assert len(srv.requests) == 2


def test_in_flight_sub_calls_do_not_hold_up_the_process_exit(server, tmp_path):
    srv = server(lambda body: time.sleep(60) or 'too late')
    script = tmp_path/'run.py'
    script.write_text(textwrap.dedent(f'''
        import threading, time
        from rlm_nb.bridge import Bridge, encode_request
        from rlm_nb.lm import LM, _litellm
        _litellm() # imported before the clock starts: the calls should be in flight when close() comes
        b = Bridge(LM('openai/sub', api_base={srv.url!r}, max_retries=0), concurrency=4)
        threading.Thread(target=b, args=(encode_request('llm_query_batched', 1, prompts=['a', 'b', 'c', 'd', 'e']),), daemon=True).start()
        time.sleep(3)
        b.close()
        print('closed', flush=True)'''))
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and 'closed' in out.stdout, out.stderr
    assert len(srv.requests) == 4 # the calls were in flight when the process ended
    assert time.monotonic() - t < 40 # not the 60 s the model takes


# ---------------------------------------------------------------- 9.13: deadlines reach sub-calls

@pytest.mark.parametrize('as_function', [False, True])
def test_sub_calls_respect_the_bridge_deadline(kernel, server, as_function):
    srv = server(lambda body: time.sleep(30) or 'too late')
    end = time.monotonic() + 1.5
    bridge = Bridge(sub(srv), deadline=(lambda: end) if as_function else end)
    t = time.monotonic()
    r = kernel.execute('llm_query("take your time")', on_request=bridge, timeout=60)
    assert time.monotonic() - t < 10
    assert r.error['ename'] == 'BridgeError' and 'deadline' in r.error['evalue'], r.text
    r = kernel.execute('llm_query_batched(["x", "y"])', on_request=bridge, timeout=60)
    assert r.error['ename'] == 'BridgeError' and 'deadline' in r.error['evalue'], r.text


def test_scripted_sub_model_delay_respects_the_deadline(kernel):
    bridge = Bridge(ScriptedLM(lambda m: 'late', delay=30), deadline=time.monotonic() + 1)
    t = time.monotonic()
    r = kernel.execute('llm_query("q")', on_request=bridge, timeout=60)
    assert time.monotonic() - t < 10 and 'deadline' in r.error['evalue']


# ---------------------------------------------------------------- 9.6: tools are checked like inputs

def make(name):
    def f(): pass
    f.__name__ = name
    return f

@pytest.mark.parametrize('tools, words', [
    ([make('print')], 'builtin print()'), ([make('sum')], 'builtin sum()'), ([make('for')], 'not a name'),
    ([make('two words')], 'not a name'), ([lambda: 1], 'lambda'), ([make('llm_query')], 'REPL function'),
    ([make('FINAL')], 'REPL function'), ([make('lookup'), make('lookup')], 'two tools'), ([make('_private')], 'underscore')])
def test_bad_tools_are_refused_in_one_line(tools, words):
    with pytest.raises(ValueError) as e: check_tools(tools)
    assert words in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(ValueError): Bridge(ScriptedLM([]), tools=tools)

def test_good_tools_pass():
    assert check_tools(TOOLS) == TOOLS and check_tools(None) == []


def test_a_failing_tool_shows_its_exception_type_in_the_kernel(kernel):
    bridge = Bridge(ScriptedLM([]), tools=TOOLS)
    r = kernel.execute('lookup("apple")', on_request=bridge, timeout=30)
    assert r.error['ename'] == 'BridgeError'
    assert r.error['evalue'] == "tool lookup failed: KeyError: 'apple'"
    [c] = bridge.end_cell()
    assert c.error == "KeyError: 'apple'"


# ---------------------------------------------------------------- 9.10: reserved names come back after each cell

def test_redefined_and_deleted_repl_functions_are_restored(kernel):
    msgs = []
    r = kernel.execute('FINAL = print\nSHOW_VARS = None\ndel llm_query\ndel lookup', on_request=Bridge(ScriptedLM([]), tools=TOOLS), timeout=30)
    assert r.ok, r.text
    note = [o['text'] for o in r.outputs if o.get('name') == 'stderr']
    assert len(note) == 1 and 'reserved' in note[0]
    assert all(n in note[0] for n in ('FINAL', 'SHOW_VARS', 'llm_query', 'lookup'))
    bridge = Bridge(ScriptedLM(['fine']), tools=TOOLS)
    r = kernel.execute('print(llm_query("still there?"), lookup("pear"))\nFINAL("done")', on_request=bridge,
                       on_comm=lambda c: msgs.append(c.get('data', {})), timeout=30)
    assert r.ok and r.text == 'fine 3\n', r.text # and no note this time
    assert [m['answer'] for m in msgs if m.get('op') == 'final'] == ['done']


# ---------------------------------------------------------------- 9.19: inputs described as what they are in the kernel

def test_a_file_input_is_described_as_the_loaded_variable(tmp_path):
    p = tmp_path/'ctx.txt'
    p.write_text('line one\nline two ✓\n' * 3)
    d = describe_input('context', p)
    assert 'ctx.txt' not in d['summary'] and 'file ctx' not in d['preview']
    assert d['summary'] == f"str, {len(p.read_text()):,} chars, 7 lines (already loaded from a file)"
    with KernelREPL(startup_code=install_code({'inputs': [write_input(p, tmp_path, 'context')], 'tools': []}), ro_paths=[str(p)]) as k:
        r = k.execute('print(type(context).__name__, len(context))', timeout=30)
    assert r.text == f"str {len(p.read_text())}\n"


# ---------------------------------------------------------------- events: late and abandoned calls in a trace

def test_from_events_puts_late_and_abandoned_calls_on_their_cells(kernel, server, tmp_path):
    "A live run: the second cell's events are written before the first cell's late call finishes."
    srv = server(slow_for('slow', 2))
    events, rows = EventStream(), []
    events.subscribe(lambda e: rows.append(json.loads(json.dumps(e.to_dict(), default=str))))
    s = Session('q', 'root', 'openai/sub')
    events.emit(SessionStarted(s))
    bridge = Bridge(sub(srv), events)
    it = Iteration(1); events.emit(ModelReplied(it))
    for k, (code, timeout) in enumerate([('llm_query("slow one")', 1), ('import time; time.sleep(3)', 30),
                                          ('llm_query("slow two")', 1)]):
        calls = bridge.begin_cell(1, k)
        r = kernel.execute(code, on_request=bridge, timeout=timeout)
        cell = CodeCell(1, k, code, status=r.status, subcalls=bridge.end_cell())
        it.cells.append(cell); events.emit(CellFinished(cell))
    bridge.close() # 'slow two' is still running: abandoned
    rebuilt = Session.from_events(rows) # the run never ended
    got = [[(c.prompt, c.error) for c in cell.subcalls] for cell in rebuilt.iterations[0].cells]
    assert got == [[('slow one', None)], [], [('slow two', ABANDONED)]]
    s.iterations, s.stop_reason = [it], 'final'
    events.emit(SessionEnded(s))
    assert Session.from_events(rows).iterations[0].cells[0].subcalls[0].response == 'echo:slow one'
