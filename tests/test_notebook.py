"""Notebook export, offline replay, fork, diff and JSONL import: real kernels, models over HTTP to a ScriptedServer."""
import json, os, random, re, shutil, subprocess, sys
from dataclasses import dataclass
from pathlib import Path
import nbformat, pytest
from nbclient import NotebookClient
import rlm_nb
from rlm_nb.events import SubCall
from rlm_nb.testing import ScriptedServer, Fault
from helpers import repl, script, rlm, turn, is_fallback, last_user, messages, root_requests, sub_requests

# ---------------------------------------------------------------------------------------------------------------
# Two recorded sessions, each run once for the module
#   'final':  plain and batched sub-calls, an error cell next to an ok cell in one iteration, FINAL_VAR
#   'budget': max_llm_calls=2 is used up by two sub-calls, the third is refused, and the fallback answer is a text FINAL

CTX = "ticket 1: printer jam\nticket 2: refund for order ORD-4417 charged twice\nticket 3: password reset"
QUESTION = "Which order was charged twice?"
ROOT_FINAL = [
    "Let me look at the tickets first.\n" + repl("lines = context.splitlines()\nprint(len(lines), 'tickets')\nprint(lines[0])"),
    "I will ask a sub-model about the second ticket.\n" + repl("kind = llm_query('Classify this ticket: ' + lines[1])\nprint('kind:', kind)"),
    "Now every ticket at once, in a batch.\n" + repl("""
        kinds = llm_query_batched(['Which kind of ticket is this? ' + l for l in lines])
        for l, k in zip(lines, kinds): print(k, '<-', l)
    """),
    "Let me parse the order numbers.\n" + repl("print('parsing', len(lines), 'lines')\nnumbers = [int(l.split()[-1]) for l in lines]")
    + "\nThat may fail on words; a safer way:\n" + repl("orders = [w for l in lines for w in l.split() if w.startswith('ORD-')]\nprint(orders)"),
    "The batch and the parse agree.\n" + repl("answer = orders[0]\nFINAL_VAR('answer')"),
]
def sub_final(prompt): return 'double charge' if 'charged twice' in prompt else 'other'

BUDGET_QUESTION = "What are the first tickets about?"
BUDGET_ANSWER = 'a printer jam and a double charge'
def root_budget(body):
    if is_fallback(body): return f"From the two summaries I have:\nFINAL({BUDGET_ANSWER})"
    replies = ["I will summarize the first ticket.\n" + repl("a = llm_query('Summarize: ' + context.splitlines()[0])\nprint('first:', a)"),
               "And the second one.\n" + repl("b = llm_query('Summarize: ' + context.splitlines()[1])\nprint('second:', b)"),
               "And the third.\n" + repl("c = llm_query('Summarize: ' + context.splitlines()[2])\nprint('third:', c)")]
    n = turn(body)
    return replies[n - 1] if n <= len(replies) else Fault(400, message=f'budget script: no reply for turn {n}')
def sub_budget(prompt): return prompt.split(': ', 2)[-1].upper()

SESSIONS = {
    'final': dict(question=QUESTION, script=script(ROOT_FINAL, sub_final), kw={}, answer='ORD-4417', stop='final',
                  state="['kind', 'lines']", fork_kw={}),
    # the fork raises the budget that stopped the original, as a user carrying on would
    'budget': dict(question=BUDGET_QUESTION, script=script(root_budget, sub_budget), kw=dict(max_llm_calls=2),
                   answer=BUDGET_ANSWER, stop='max_llm_calls', state="['a', 'b']", fork_kw=dict(max_llm_calls=10)),
}
NAMES = list(SESSIONS)


@dataclass
class Recorded:
    res: object # RLMResult
    srv: ScriptedServer # stopped: nothing may reach it after the run
    trace: Path


def cached(make):
    "A getter that builds each value once, on first use."
    store = {}
    def get(name):
        if name not in store: store[name] = make(name)
        return store[name]
    return get


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    def make(name):
        spec = SESSIONS[name]
        srv = ScriptedServer(spec['script']).start()
        try: res = rlm(srv, trace=d/f'{name}.jsonl', **spec['kw'])(spec['question'], context=CTX)
        finally: srv.stop()
        assert res.stop_reason == spec['stop'] and res.answer == spec['answer'], res
        return Recorded(res, srv, d/f'{name}.jsonl')
    return cached(make)


@pytest.fixture(scope='module')
def exported(runs, tmp_path_factory):
    "name -> path of the session's exported notebook, alone in its own directory. Tests must not modify it."
    def make(name):
        out = tmp_path_factory.mktemp(f'exported-{name}')/f'{name}.ipynb'
        return Path(runs(name).res.export(out))
    return cached(make)


def fork_script():
    "The live continuation after a fork at 2: one more root turn that asks a new sub-call and finishes."
    code = repl("""
        extra = llm_query('Fork question: ' + context.splitlines()[-1])
        print('extra:', extra)
        print('state:', sorted(k for k in ('lines', 'kind', 'a', 'b') if k in globals()))
        FINAL(extra)
    """)
    root = lambda body: ("Continuing after the fork.\n" + code if turn(body) == 3
                         else Fault(400, message=f'fork script: unexpected root turn {turn(body)}'))
    return script(root, lambda p: 'fork answer for ' + p.split(': ', 1)[1])

FORK_PROMPT = 'Fork question: ' + CTX.splitlines()[-1]
FORK_ANSWER = 'fork answer for ' + CTX.splitlines()[-1]


@pytest.fixture(scope='module')
def forked(exported):
    "name -> (RLMResult of fork(notebook, at=2) continued live, the server of the continuation)."
    def make(name):
        srv = ScriptedServer(fork_script()).start()
        try: res = rlm_nb.fork(exported(name), at=2, model='openai/root', sub_model='openai/sub', api_base=srv.url,
                               verbose=False, **SESSIONS[name]['fork_kw'])
        finally: srv.stop()
        return res, srv
    return cached(make)

# ---------------------------------------------------------------------------------------------------------------
# Helpers

def rlm_meta(cell) -> dict: return cell.get('metadata', {}).get('rlm_nb', {}) or {}
def tags(cell) -> list: return list(cell.get('metadata', {}).get('tags', []))
def rlm_code_cells(nb) -> list: return [c for c in nb.cells if c.cell_type == 'code' and 'cell' in rlm_meta(c)]
def iteration_cells(nb) -> list: return [c for c in nb.cells if c.cell_type == 'markdown' and 'iteration' in rlm_meta(c)]
def read(path): return nbformat.read(str(path), as_version=4)

def header_of(nb) -> dict:
    "The session header: directly in metadata.rlm_nb, or under its 'session' key."
    meta = nb.metadata['rlm_nb']
    return meta.get('session', meta)
def write(nb, path): nbformat.write(nb, str(path))


def stream_text(x) -> str:
    "The stream text of a list of nbformat outputs (or of anything holding one), in order."
    if x is None: return ''
    if isinstance(x, str): return x
    if hasattr(x, 'outputs') and not isinstance(x, dict): x = x.outputs
    if isinstance(x, dict): x = x.get('outputs', [x])
    out = []
    for o in x:
        if o.get('output_type') == 'stream':
            t = o.get('text', '')
            out.append(''.join(t) if isinstance(t, list) else t)
    return ''.join(out)


def errors_of(outputs) -> list:
    return [(o['ename'], o['evalue']) for o in outputs if o.get('output_type') == 'error']


def run_with_nbclient(path: Path, workdir: Path):
    "Copy the notebook alone into `workdir` and run it top to bottom with plain nbclient; returns the executed nb."
    workdir.mkdir(parents=True, exist_ok=True)
    assert not any(workdir.iterdir()), f"{workdir} should be empty"
    dst = workdir/path.name
    shutil.copy(path, dst)
    nb = read(dst)
    NotebookClient(nb, timeout=60, kernel_name='python3', resources={'metadata': {'path': str(workdir)}}).execute()
    return nb


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, '-m', 'rlm_nb', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ})


def listing(d: Path) -> list: return sorted(p.name for p in Path(d).iterdir())


def mentions_tokens(text: str, session) -> bool:
    "Does `text` show the session's token usage (its total, or root and sub separately)?"
    def shown(n): return f"{n:,}" in text or re.search(rf'(?<![\d,]){n}(?![\d,])', text) is not None
    u = session.usage.total_tokens
    return shown(u) or (shown(session.root_usage.total_tokens) and shown(session.sub_usage.total_tokens))

# ---------------------------------------------------------------------------------------------------------------
# 1. Export -> nbformat.validate -> plain nbclient -> replay -> fork, for both sessions

@pytest.mark.parametrize('name', NAMES)
def test_export_writes_a_valid_notebook_alone_in_its_directory(runs, exported, name, tmp_path):
    path = exported(name)
    assert path.exists() and path.suffix == '.ipynb'
    assert listing(path.parent) == [path.name]  # no temp file, no side file: the small str input is embedded
    nb = read(path)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    # the function form gives the same notebook as the method
    again = rlm_nb.export(runs(name).res, tmp_path/'again.ipynb')
    assert Path(again) == tmp_path/'again.ipynb'
    nb2 = read(again)
    nbformat.validate(nb2)
    assert [(c.cell_type, c.source) for c in nb2.cells] == [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize('name', NAMES)
def test_exported_notebook_runs_with_plain_nbclient_in_an_empty_directory(runs, exported, name, tmp_path):
    recorded = read(exported(name))
    nb = run_with_nbclient(exported(name), tmp_path/'elsewhere')
    session = runs(name).res.session
    ran, rec = rlm_code_cells(nb), rlm_code_cells(recorded)
    assert len(ran) == len(rec) == len(session.cells)
    for new, old, cell in zip(ran, rec, session.cells):
        where = f"iteration {cell.iteration} cell {cell.index}"
        assert new.source == cell.code, where
        assert stream_text(new.outputs) == stream_text(old.outputs) == stream_text(cell.outputs), where
        assert errors_of(new.outputs) == errors_of(cell.outputs), where
        assert ('raises-exception' in tags(new)) == (cell.status == 'error'), where
    # the llm_query answers came from the recording: the sub-model's replies are printed by the notebook
    printed = ''.join(stream_text(c.outputs) for c in ran)
    for s in session.subcalls: assert s.response in printed
    # only the recorded error cells raised
    for c in nb.cells:
        if c.cell_type == 'code' and 'raises-exception' not in tags(c): assert not errors_of(c.outputs), c.source


@pytest.mark.parametrize('name', NAMES)
def test_replay_reproduces_every_cell_offline(runs, exported, name):
    session = runs(name).res.session
    before = exported(name).read_bytes()
    rr = rlm_nb.replay(exported(name))
    assert rr.ok, [(c.iteration, c.index, c.equal) for c in rr.cells]
    assert [(c.iteration, c.index) for c in rr.cells] == [(c.iteration, c.index) for c in session.cells]
    assert all(c.equal for c in rr.cells)
    for comp, cell in zip(rr.cells, session.cells):
        where = f"iteration {cell.iteration} cell {cell.index}"
        assert stream_text(comp.replayed) == stream_text(comp.recorded) == stream_text(cell.outputs), where
    assert rr.session.query == session.query and rr.session.answer == session.answer
    assert exported(name).read_bytes() == before  # replay does not rewrite the notebook


@pytest.mark.parametrize('name', NAMES)
def test_fork_replays_the_prefix_offline_and_continues_live(runs, forked, exported, name):
    orig = runs(name).res.session
    res, srv = forked(name)
    new = res.session
    # the prefix: iterations 1 and 2 as recorded
    assert [it.response for it in new.iterations[:2]] == [it.response for it in orig.iterations[:2]]
    for a, b in zip(orig.iterations[:2], new.iterations[:2]):
        assert [c.code for c in b.cells] == [c.code for c in a.cells]
        assert [stream_text(c.outputs) for c in b.cells] == [stream_text(c.outputs) for c in a.cells]
        assert [(s.prompt, s.response) for s in b.subcalls] == [(s.prompt, s.response) for s in a.subcalls]
    # the continuation: live, against the new server, in a kernel holding the prefix's variables
    assert res.stop_reason == 'final' and res.answer == FORK_ANSWER
    assert len(new.iterations) == 3 and new.iterations[2].response.startswith('Continuing after the fork.')
    assert f"state: {SESSIONS[name]['state']}" in new.iterations[2].cells[0].text
    roots = root_requests(srv)
    assert len(roots) == 1 and turn(roots[0]) == 3, [turn(b) for b in roots]
    history = messages(roots[0])
    assert [m['content'] for m in history if m['role'] == 'assistant'] == [it.response for it in orig.iterations[:2]]
    users = [m['content'] for m in history if m['role'] == 'user']
    assert users[0] == orig.first_message
    for it, fb in zip(orig.iterations[:2], users[1:]):
        for c in it.cells: assert c.text.strip() in fb
    # no sub-call of the prefix reached a server again; the continuation's one did
    prefix_prompts = {s.prompt for it in orig.iterations[:2] for s in it.subcalls}
    assert prefix_prompts
    assert [last_user(b) for b in sub_requests(srv)] == [FORK_PROMPT]
    assert [(s.prompt, s.response) for s in new.iterations[2].subcalls] == [(FORK_PROMPT, FORK_ANSWER)]


def test_fork_of_a_trace_session_takes_the_inputs_it_lacks(runs, server):
    r = runs('final')
    srv = server(script(lambda body: ("The first block split the lines.\n" + repl("FINAL(len(lines))")
                                      if turn(body) == 2 else Fault(400, message='unexpected turn'))))
    res = rlm_nb.fork(rlm_nb.load_session(r.trace), at=1, inputs={'context': CTX}, model='openai/root',
                      sub_model='openai/sub', api_base=srv.url, verbose=False)
    assert res.stop_reason == 'final' and res.answer == '3'
    assert res.session.iterations[0].response == r.res.session.iterations[0].response
    assert len(root_requests(srv)) == 1 and not sub_requests(srv)

@pytest.mark.parametrize('at', [0, 5, 6])
def test_fork_at_an_iteration_it_cannot_continue_from_is_refused(exported, server, at):
    "0 and 6 are out of range; 5 is the iteration that ended the session with FINAL_VAR."
    srv = server(fork_script())
    with pytest.raises(ValueError, match='at|iteration'):
        rlm_nb.fork(exported('final'), at=at, model='openai/root', sub_model='openai/sub', api_base=srv.url, verbose=False)
    assert not srv.requests

# ---------------------------------------------------------------------------------------------------------------
# 2. What the notebook holds

@pytest.mark.parametrize('name', NAMES)
def test_notebook_layout_cells_metadata_and_header(runs, exported, name):
    spec, s = SESSIONS[name], runs(name).res.session
    nb = read(exported(name))
    cells = nb.cells
    shim = [i for i, c in enumerate(cells) if 'rlm-nb-shim' in tags(c)]
    loads = [i for i, c in enumerate(cells) if 'rlm-nb-inputs' in tags(c)]
    its = [i for i, c in enumerate(cells) if c.cell_type == 'markdown' and 'iteration' in rlm_meta(c)]
    assert len(shim) == 1 and len(loads) == 1 and its
    assert cells[shim[0]].cell_type == 'code' and cells[loads[0]].cell_type == 'code'
    assert shim[0] < loads[0] < its[0]
    assert 'context' in cells[loads[0]].source  # the setup cell loads the input
    # a title: the question and both models, before the first iteration
    titles = [c.source for c in cells[:its[0]] if c.cell_type == 'markdown']
    assert any(spec['question'] in t and 'openai/root' in t and 'openai/sub' in t for t in titles), titles
    # one markdown cell per iteration holding the reasoning, followed by its code cells
    assert len(its) == len(s.iterations)
    bounds = its + [len(cells)]
    for k, it in enumerate(s.iterations):
        md = cells[its[k]]
        meta = rlm_meta(md)['iteration']
        assert meta.get('index', meta.get('iteration')) == it.index
        for line in it.reasoning.splitlines():
            if line.strip(): assert line.strip() in md.source, (it.index, line)
        code = [c for c in cells[its[k] + 1:bounds[k + 1]] if c.cell_type == 'code']
        assert [c.source for c in code] == [c.code for c in it.cells], it.index
        for nc, rc in zip(code, it.cells):
            m = rlm_meta(nc)['cell']
            assert (m['iteration'], m['index'], m['status']) == (rc.iteration, rc.index, rc.status)
            assert m['duration'] == pytest.approx(rc.duration)
            assert [SubCall.from_dict(d) for d in m['subcalls']] == rc.subcalls
            assert nc.execution_count == rc.execution_count and rc.execution_count is not None
            assert nc.outputs == rc.outputs
            assert ('raises-exception' in tags(nc)) == (rc.status == 'error')
    # the last cell: the answer
    last = cells[-1]
    assert last.cell_type == 'markdown' and 'rlm-nb-final' in tags(last)
    assert spec['answer'] in last.source
    # the session header
    header = header_of(nb)
    assert header['query'] == spec['question']
    assert (header['model'], header['sub_model']) == ('openai/root', 'openai/sub')
    assert header['stop_reason'] == spec['stop'] and header['id'] == s.id
    assert [i['name'] for i in header['inputs']] == ['context']


def test_final_session_has_plain_batched_and_error_cells_in_the_notebook(runs, exported):
    nb = read(exported('final'))
    code = rlm_code_cells(nb)
    subcalls = [rlm_meta(c)['cell']['subcalls'] for c in code]
    assert [len(x) for x in subcalls] == [0, 1, 3, 0, 0, 0]
    plain, batch = subcalls[1][0], subcalls[2]
    assert plain['kind'] == 'llm' and plain['batch'] is None and plain['response'] == 'double charge'
    assert {b['batch'] for b in batch} == {batch[0]['batch']} and batch[0]['batch'] is not None
    assert [b['response'] for b in batch] == ['other', 'double charge', 'other']
    error = code[3]
    assert rlm_meta(error)['cell']['status'] == 'error' and 'raises-exception' in tags(error)
    assert errors_of(error.outputs) == [('ValueError', "invalid literal for int() with base 10: 'jam'")]
    assert stream_text(error.outputs) == 'parsing 3 lines\n'
    assert [rlm_meta(c)['cell']['iteration'] for c in code] == [1, 2, 3, 4, 4, 5]
    assert "FINAL_VAR('answer')" in code[-1].source


def test_budget_session_shows_the_fallback_and_why_it_stopped(runs, exported):
    s = runs('budget').res.session
    assert [it.kind for it in s.iterations] == ['turn', 'turn', 'turn', 'fallback']  # the third call was refused
    nb = read(exported('budget'))
    md = iteration_cells(nb)
    assert len(md) == 4 and 'From the two summaries I have:' in md[-1].source
    last = nb.cells[-1]
    assert BUDGET_ANSWER in last.source and 'max_llm_calls' in last.source


@pytest.mark.parametrize('name', NAMES)
def test_read_notebook_and_load_session_rebuild_the_session(runs, exported, name):
    orig = runs(name).res.session
    for s in (rlm_nb.read_notebook(exported(name)), rlm_nb.load_session(exported(name)), rlm_nb.load_session(runs(name).trace)):
        assert isinstance(s, rlm_nb.Session)
        assert (s.id, s.query, s.model, s.sub_model, s.stop_reason) == (orig.id, orig.query, orig.model, orig.sub_model, orig.stop_reason)
        assert s.final == orig.final
        assert [(it.index, it.kind, it.response) for it in s.iterations] == [(it.index, it.kind, it.response) for it in orig.iterations]
        assert [(c.iteration, c.index, c.code, c.status, c.execution_count) for c in s.cells] == \
               [(c.iteration, c.index, c.code, c.status, c.execution_count) for c in orig.cells]
        assert [stream_text(c.outputs) for c in s.cells] == [stream_text(c.outputs) for c in orig.cells]
        assert s.subcalls == orig.subcalls
        assert s.usage == orig.usage  # `diff` reports usage from notebooks too

# ---------------------------------------------------------------------------------------------------------------
# 3. Secrets stay out of the notebook

KEY = 'sk-test-abcdefghijklmnopqrstuvwxyz'
URL_USER, URL_PASSWORD = 'rlmuser', 'hunter2secret'

def test_no_key_and_no_url_credentials_in_the_exported_notebook(server, monkeypatch, tmp_path):
    import base64
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    # a model that echoes the key, as error messages do: the key reaches the outputs and the sub-call record
    srv = server(script([repl("""
        import os
        print('key in kernel:', os.environ.get('OPENAI_API_KEY'))
        echo = llm_query('say hello')
        print(echo)
    """), "The echo came back.\nFINAL(done)"], lambda p: f'hello, your key is {KEY}'))
    url = srv.url.replace('http://', f'http://{URL_USER}:{URL_PASSWORD}@')
    res = rlm_nb.RLM(model='openai/root', sub_model='openai/sub', api_base=url, api_key=KEY, verbose=False)("Check", context='abc')
    assert res.stop_reason == 'final' and res.answer == 'done'
    assert srv.requests, "the server with credentials in its URL was not reached"
    assert KEY in res.session.subcalls[0].response  # the echo really went through...
    path = Path(res.export(tmp_path/'secret.ipynb'))
    text = path.read_text()
    for secret in (KEY, KEY[len('sk-test-'):], URL_PASSWORD, f'{URL_USER}:{URL_PASSWORD}',
                   base64.b64encode(f'{URL_USER}:{URL_PASSWORD}'.encode()).decode()):
        assert secret not in text, f"{secret!r} is in the exported notebook"  # ...but not into the notebook
    assert 'hello, your key is' in text
    assert listing(tmp_path) == ['secret.ipynb']
    assert rlm_nb.replay(path).ok  # redacted consistently: the redacted answer prints the redacted output

# ---------------------------------------------------------------------------------------------------------------
# 4. Inputs: embedded, loaded from their path, or left out above embed_limit

@pytest.fixture(scope='module')
def path_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('path-input')
    data = d/'tickets.txt'
    data.write_text(''.join(f'ticket {i}: routine\n' for i in range(200)) + 'HIDDEN-PATH-MARKER-93\n')
    root = ["Count the lines.\n" + repl("lines = context.splitlines()\nprint(len(lines), lines[0])"), "There are 201 lines.\nFINAL(201 lines)"]
    srv = ScriptedServer(script(root)).start()
    try: res = rlm(srv)("How many lines?", context=data)
    finally: srv.stop()
    assert res.answer == '201 lines'
    nb_path = Path(res.export(d/'path.ipynb'))
    return res, data, nb_path


def test_path_input_is_loaded_from_its_original_path(path_run, tmp_path):
    res, data, nb_path = path_run
    text = nb_path.read_text()
    assert 'HIDDEN-PATH-MARKER-93' not in text  # not embedded
    nb = read(nb_path)
    load = next(c for c in nb.cells if 'rlm-nb-inputs' in tags(c))
    assert str(data.resolve()) in load.source or str(data) in load.source
    assert rlm_nb.replay(nb_path).ok
    ran = run_with_nbclient(nb_path, tmp_path/'a')
    assert stream_text(rlm_code_cells(ran)[0].outputs) == '201 ticket 0: routine\n'
    original = data.read_text()
    try:  # a changed file shows up in the run: it is read from its path, not from a copy
        data.write_text(original.replace('ticket 0: routine', 'ticket 0: CHANGED', 1))
        ran = run_with_nbclient(nb_path, tmp_path/'b')
        assert stream_text(rlm_code_cells(ran)[0].outputs) == '201 ticket 0: CHANGED\n'
    finally: data.write_text(original)


def test_replay_with_a_missing_input_file_names_the_file(path_run):
    res, data, nb_path = path_run
    moved = data.with_name('moved-away.txt')
    data.rename(moved)
    try:
        with pytest.raises((FileNotFoundError, rlm_nb.NotebookError)) as e: rlm_nb.replay(nb_path)
        msg = str(e.value)
        assert str(data) in msg or str(data.resolve()) in msg, msg
        assert 'Traceback' not in msg
    finally: moved.rename(data)


def test_embed_limit_decides_which_inputs_are_embedded(server, tmp_path):
    rng = random.Random(5)  # incompressible filler, so the size of the notebook tells whether it holds the input
    big = 'HEAD of the log\n' + ''.join(f'filler {i} {rng.getrandbits(64):016x}\n' for i in range(200)) + 'EMBED-MARKER-51\nTAIL'
    srv = server(script(["Measure it.\n" + repl("print(len(context), context.splitlines()[0])"), "Measured.\nFINAL(done)"]))
    res = rlm(srv)("How long is it?", context=big)
    assert res.answer == 'done'
    (tmp_path/'default').mkdir(); (tmp_path/'small').mkdir()
    default = Path(res.export(tmp_path/'default'/'d.ipynb'))  # 100_000 by default: a 7 kB input is embedded
    small = Path(res.export(tmp_path/'small'/'s.ipynb', embed_limit=1000))
    nbformat.validate(read(small))
    assert 'EMBED-MARKER-51' not in small.read_text()
    assert default.stat().st_size - small.stat().st_size > len(big) / 2
    assert listing(tmp_path/'default') == ['d.ipynb']
    ran = run_with_nbclient(default, tmp_path/'run')
    assert stream_text(rlm_code_cells(ran)[0].outputs) == f'{len(big)} HEAD of the log\n'
    assert rlm_nb.replay(small).ok  # the input left out of the notebook is still found by a replay

# ---------------------------------------------------------------------------------------------------------------
# 5. From a JSONL trace, in Python and from the command line; diff

def test_jsonl_trace_exports_with_its_inputs_and_replays(runs, tmp_path):
    r = runs('final')
    s = rlm_nb.load_session(r.trace)
    assert s.iterations == r.res.session.iterations
    out = tmp_path/'from_trace.ipynb'
    assert Path(rlm_nb.export(s, out, inputs={'context': CTX})) == out
    nbformat.validate(read(out))
    assert listing(tmp_path) == ['from_trace.ipynb']
    rr = rlm_nb.replay(out)
    assert rr.ok and len(rr.cells) == len(r.res.session.cells) == 6


def test_cli_export_from_a_trace_then_replay(runs, tmp_path):
    r = runs('final')
    ctx = tmp_path/'ctx.txt'
    ctx.write_text(CTX)
    out = tmp_path/'out.ipynb'
    p = cli('export', r.trace, '-o', out, '--input', f'context={ctx}')
    assert p.returncode == 0, p.stderr
    nb = read(out)
    nbformat.validate(nb)
    assert header_of(nb)['query'] == QUESTION
    assert [c.source for c in rlm_code_cells(nb)] == [c.code for c in r.res.session.cells]
    p = cli('replay', out)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'Traceback' not in p.stderr


def test_cli_export_of_a_trace_without_its_input_is_a_one_line_error(runs, tmp_path):
    out = tmp_path/'out'/'x.ipynb'
    out.parent.mkdir()
    p = cli('export', runs('final').trace, '-o', out)
    assert p.returncode == 2, p.stdout + p.stderr
    assert 'context' in p.stderr and 'Traceback' not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert listing(out.parent) == []


def test_diff_names_the_first_diverging_iteration_and_both_usages(runs, exported, forked, tmp_path):
    a = exported('final')
    fork_res, _ = forked('final')
    b = Path(fork_res.export(tmp_path/'fork.ipynb'))
    sa, sb = rlm_nb.read_notebook(a), rlm_nb.read_notebook(b)
    assert sa.iterations[2].response != sb.iterations[2].response
    text = rlm_nb.diff_sessions(a, b)
    assert re.search(r'iteration\D{0,4}3\b', text, re.I), text
    assert mentions_tokens(text, sa) and mentions_tokens(text, sb), text
    assert 'unknown' in text  # local models: the cost is unknown, not $0
    assert rlm_nb.diff_sessions(sa, sb) == text  # Sessions or paths
    p = cli('diff', a, b)
    assert p.returncode == 0, p.stderr
    assert re.search(r'iteration\D{0,4}3\b', p.stdout, re.I), p.stdout
    assert mentions_tokens(p.stdout, sa) and mentions_tokens(p.stdout, sb), p.stdout


def test_replay_reports_a_changed_output_and_the_cli_exits_1(exported, tmp_path):
    nb = read(exported('final'))
    first = rlm_code_cells(nb)[0]
    stream = next(o for o in first.outputs if o.output_type == 'stream')
    assert '3 tickets' in stream.text
    stream.text = stream.text.replace('3 tickets', '4 tickets')
    path = tmp_path/'changed.ipynb'
    write(nb, path)
    rr = rlm_nb.replay(path)
    assert not rr.ok
    assert [(c.iteration, c.index) for c in rr.cells if not c.equal] == [(1, 0)]
    bad = next(c for c in rr.cells if not c.equal)
    assert '4 tickets' in stream_text(bad.recorded) and '3 tickets' in stream_text(bad.replayed)
    p = cli('replay', path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert 'Traceback' not in p.stderr

# ---------------------------------------------------------------------------------------------------------------
# 6. Bad notebooks, tampered prompts and failed exports: a clear error and no file left behind

def _truncated(src: Path, dst: Path): dst.write_text(src.read_text()[:len(src.read_text()) // 2])
def _other_json(src: Path, dst: Path): dst.write_text(json.dumps({'hello': 'world', 'cells': 3}))
def _plain_notebook(src: Path, dst: Path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Notes'), nbformat.v4.new_code_cell('print(1)')])
    write(nb, dst)
def _empty(src: Path, dst: Path): dst.write_text('')

CORRUPTIONS = {'truncated_json': _truncated, 'json_not_a_notebook': _other_json, 'plain_notebook': _plain_notebook,
               'empty_file': _empty}

@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_a_corrupted_notebook_is_a_NotebookError(exported, kind, tmp_path):
    assert issubclass(rlm_nb.NotebookError, ValueError)
    path = tmp_path/'broken.ipynb'
    CORRUPTIONS[kind](exported('final'), path)
    for fn in (rlm_nb.read_notebook, rlm_nb.load_session, rlm_nb.replay):
        with pytest.raises(rlm_nb.NotebookError) as e: fn(path)
        msg = str(e.value)
        assert 'broken.ipynb' in msg, f"{fn.__name__}: {msg}"
        assert 'Traceback' not in msg and len(msg) < 1000
    assert listing(tmp_path) == ['broken.ipynb']
    if kind != 'truncated_json': return  # the command line once is enough
    p = cli('replay', path)
    assert p.returncode == 2 and 'broken.ipynb' in p.stderr, p.stdout + p.stderr
    assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


TAMPERS = {
    'plain': (2, 'Classify this ticket: ', 'Classify this TICKET please: ', 'ticket 2: refund for order ORD-4417 charged twice'),
    'batched': (3, 'Which kind of ticket is this? ', 'What sort of ticket is this? ', 'ticket 1: printer jam'),
}

@pytest.mark.parametrize('which', list(TAMPERS))
def test_a_tampered_prompt_raises_ReplayMismatch_naming_the_cell(exported, which, tmp_path):
    assert issubclass(rlm_nb.ReplayMismatch, ValueError)
    iteration, old, new, line = TAMPERS[which]
    nb = read(exported('final'))
    cell = next(c for c in rlm_code_cells(nb) if rlm_meta(c)['cell']['iteration'] == iteration)
    assert old in cell.source
    cell.source = cell.source.replace(old, new)
    path = tmp_path/'tampered.ipynb'
    write(nb, path)
    with pytest.raises(rlm_nb.ReplayMismatch) as e: rlm_nb.replay(path)
    msg = str(e.value)
    assert re.search(rf'iteration\D{{0,3}}{iteration}\b', msg, re.I), msg
    assert re.search(r'\b(cell|block)\b', msg, re.I), msg
    assert old + line in msg and new + line in msg, msg  # both prompts
    assert listing(tmp_path) == ['tampered.ipynb']
    p = cli('replay', path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert 'Traceback' not in p.stderr


def test_export_of_a_trace_session_without_its_input_is_refused_and_writes_nothing(runs, tmp_path):
    s = rlm_nb.load_session(runs('final').trace)
    target = tmp_path/'out'
    target.mkdir()
    with pytest.raises(ValueError) as e: rlm_nb.export(s, target/'x.ipynb')
    assert 'context' in str(e.value)
    assert listing(target) == []
    # an existing notebook at the target is left as it was
    (target/'x.ipynb').write_text('OLD')
    with pytest.raises(ValueError): rlm_nb.export(s, target/'x.ipynb')
    assert listing(target) == ['x.ipynb'] and (target/'x.ipynb').read_text() == 'OLD'


def test_export_to_a_path_that_cannot_be_written_leaves_nothing(runs, tmp_path):
    res = runs('final').res
    # the parent is a file
    (tmp_path/'a-file').write_text('x')
    with pytest.raises((OSError, ValueError)) as e: res.export(tmp_path/'a-file'/'out.ipynb')
    assert 'a-file' in str(e.value)
    assert listing(tmp_path) == ['a-file'] and (tmp_path/'a-file').read_text() == 'x'
    # the target is a directory: the temp file is written next to it, and must be cleaned up
    (tmp_path/'a-dir.ipynb').mkdir()
    with pytest.raises((OSError, ValueError)) as e: res.export(tmp_path/'a-dir.ipynb')
    assert 'a-dir.ipynb' in str(e.value)
    assert listing(tmp_path) == ['a-dir.ipynb', 'a-file'] and listing(tmp_path/'a-dir.ipynb') == []
    # the same with an input too big to embed: the side files written for it go too
    with pytest.raises((OSError, ValueError)): res.export(tmp_path/'a-dir.ipynb', embed_limit=10)
    assert listing(tmp_path) == ['a-dir.ipynb', 'a-file'] and listing(tmp_path/'a-dir.ipynb') == []


def test_exported_notebook_runs_under_jupyter_nbconvert_execute(runs, exported, tmp_path):
    "The plain command line a reader would use, in a directory with nothing else in it."
    shutil.copy(exported('final'), tmp_path/'final.ipynb')
    p = subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'notebook', '--execute', '--output', 'ran.ipynb',
                        'final.ipynb'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ran, session = rlm_code_cells(read(tmp_path/'ran.ipynb')), runs('final').res.session
    assert [stream_text(c.outputs) for c in ran] == [stream_text(c.outputs) for c in session.cells]

# ---------------------------------------------------------------------------------------------------------------
# 7. Found in review: each of these failed before its fix

SERVICE_TOKEN = 'tok-9f3a71c2e8b54d06aa'
DB_PASSWORD = 'hunter22pw'

def test_export_scrubs_secrets_before_recording_so_no_hash_of_them_and_the_notebook_still_replays(server, monkeypatch, tmp_path):
    from rlm_nb.bridge import prompt_hash
    from rlm_nb.events import redact
    monkeypatch.setenv('MY_SERVICE_TOKEN', SERVICE_TOKEN)
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'eu-west-1b')  # secret-ish names holding ordinary data
    monkeypatch.setenv('GITHUB_SERVER_URL', 'https://github.com')
    ctx = ("deploy to eu-west-1b failed, see https://github.com/org/repo/issues/1\n"
           f"auth {SERVICE_TOKEN} then ERROR connecting to postgres://admin:{DB_PASSWORD}@db.internal/prod")
    srv = server(script(["Ask about it.\n" + repl("r = llm_query('Explain: ' + context)\nprint(r)"), "Done.\n" + repl("FINAL(r)")],
                        lambda p: 'a failed login'))
    res = rlm(srv)("What went wrong?", context=ctx)
    assert res.stop_reason == 'final' and res.answer == 'a failed login'
    prompt = res.session.subcalls[0].prompt
    assert SERVICE_TOKEN in prompt and DB_PASSWORD in prompt  # the secrets really were in the run
    (tmp_path/'out').mkdir()
    path = Path(res.export(tmp_path/'out'/'s.ipynb'))
    text = path.read_text()
    for secret in (SERVICE_TOKEN, DB_PASSWORD, prompt_hash(prompt)):
        assert secret not in text, f"{secret!r} is in the exported notebook"
    assert 'eu-west-1b' in text and 'https://github.com/org/repo/issues/1' in text  # ordinary data is kept
    assert listing(tmp_path/'out') == ['s.ipynb']
    assert rlm_nb.replay(path).ok  # the hashes are of the prompts the notebook replays
    ran = run_with_nbclient(path, tmp_path/'run')  # a ReplayMismatch in the shim would raise CellExecutionError here
    assert stream_text(rlm_code_cells(ran)[0].outputs) == 'a failed login\n'
    # the same at the function level: only values of key-like names go
    env = {'AWS_DEFAULT_REGION': 'eu-west-1b', 'GITHUB_SERVER_URL': 'https://github.com', 'MY_SERVICE_TOKEN': SERVICE_TOKEN}
    assert redact(f"region eu-west-1b at https://github.com/x with {SERVICE_TOKEN}", env=env) == \
           "region eu-west-1b at https://github.com/x with [REDACTED]"


def test_fork_reloads_the_inputs_after_the_kernel_restarts_in_the_continuation(exported, server):
    def root(body):
        if turn(body) == 3: return "Something risky.\n" + repl("import os; os._exit(1)")
        if turn(body) == 4: return "Again.\n" + repl("print(len(context))\nFINAL(len(context))")
        return Fault(400, message=f'unexpected root turn {turn(body)}')
    srv = server(script(root))
    res = rlm_nb.fork(exported('final'), at=2, model='openai/root', sub_model='openai/sub', api_base=srv.url, verbose=False)
    died, after = res.session.cells[-2:]
    assert died.status == 'died'
    assert after.status == 'ok' and after.text == f'{len(CTX)}\n', after.text
    assert res.stop_reason == 'final' and res.answer == str(len(CTX))


def test_replay_restarts_the_kernel_where_the_recorded_kernel_died(server, tmp_path):
    srv = server(script(["Set it.\n" + repl("x = 1\nprint('set')"), "Crash.\n" + repl("import os; os._exit(1)"),
                         "Check.\n" + repl("print('x' in globals())"), repl("FINAL('ok')")]))
    res = rlm(srv)("Does x survive?", context='abc')
    assert res.answer == 'ok' and [c.status for c in res.session.cells][:3] == ['ok', 'died', 'ok']
    assert res.session.cells[2].text == 'False\n'  # the restart lost x
    rr = rlm_nb.replay(res.export(tmp_path/'died.ipynb'))
    assert rr.ok, [(c.iteration, c.index, stream_text(c.replayed)) for c in rr.differing]
    assert stream_text(rr.cells[2].replayed) == 'False\n'  # the replay lost it too


def test_a_refused_call_then_FINAL_in_the_same_cell_replays_ok(server, tmp_path):
    srv = server(script(["Ask.\n" + repl("""
        try: a = llm_query('hello')
        except Exception as e: a = 'refused'; print(e)
        FINAL(a)""")]))
    res = rlm(srv, max_total_tokens=10)("Greet?", context='abc')
    assert res.stop_reason == 'final' and res.answer == 'refused'
    assert 'budget exhausted (max_total_tokens)' in res.session.cells[0].text and not sub_requests(srv)
    rr = rlm_nb.replay(res.export(tmp_path/'refusal.ipynb'))
    assert rr.ok and 'budget exhausted (max_total_tokens)' in stream_text(rr.cells[0].replayed)


def test_an_extra_call_in_the_replay_is_a_mismatch_even_with_max_llm_calls_set(server, tmp_path):
    data = tmp_path/'lines.txt'
    data.write_text('alpha\nbeta\n')
    srv = server(script(["Classify.\n" + repl("""
        got = []
        for line in context.splitlines():
            try: got.append(llm_query('classify ' + line))
            except Exception: pass
        print('classified:', bool(got))"""), repl("FINAL('ok')")]))
    res = rlm(srv, max_llm_calls=100)("Classify the lines", context=data)
    assert res.stop_reason == 'final' and res.sub_calls == 2
    path = res.export(tmp_path/'extra.ipynb')
    data.write_text('alpha\nbeta\ngamma\n')  # the replay makes a third call, which the original never made
    with pytest.raises(rlm_nb.ReplayMismatch) as e: rlm_nb.replay(path)
    assert 'classify gamma' in str(e.value) and 'budget exhausted' not in str(e.value)


def test_a_failed_export_keeps_an_earlier_export_and_its_inputs_folder(server, tmp_path):
    srv = server(script(["Look.\n" + repl("print(context[:12])"), "Done.\n" + repl("FINAL('ok')")]))
    d = tmp_path/'out'
    d.mkdir()
    a = rlm(srv)("Which session?", context='SESSION-A ' * 200)
    a.export(d/'x.ipynb', embed_limit=100)
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob('*') if p.is_file()}
    assert (d/'x_inputs').is_dir() and rlm_nb.replay(d/'x.ipynb').ok
    extra = tmp_path/'extra.txt'
    extra.write_text('x')
    b = rlm(srv)("Which session?", context='SESSION-B ' * 200, extra=extra)
    extra.unlink()  # b's path input is gone: its export fails
    with pytest.raises((OSError, ValueError)): b.export(d/'x.ipynb', embed_limit=100)
    assert {p.relative_to(d): p.read_bytes() for p in d.rglob('*') if p.is_file()} == before
    assert listing(d) == ['x.ipynb', 'x_inputs']
    rr = rlm_nb.replay(d/'x.ipynb')
    assert rr.ok and stream_text(rr.cells[0].replayed) == 'SESSION-A SE\n'


def test_cli_replay_where_a_cell_kills_the_kernel_is_a_one_line_error(exported, tmp_path):
    nb = read(exported('final'))
    rlm_code_cells(nb)[0].source = "import os; os._exit(1)"  # stands in for an out-of-memory crash in the replay
    path = tmp_path/'killed.ipynb'
    write(nb, path)
    p = cli('replay', path)
    assert p.returncode in (1, 2), p.stdout + p.stderr
    assert 'Traceback' not in p.stderr, p.stderr
    errors = [l for l in p.stderr.splitlines() if 'error' in l.lower()]
    assert len(errors) == 1 and errors[0].startswith('rlm-nb: error:') and p.stderr.strip().splitlines()[-1] == errors[0], p.stderr


CUSTOM_PROMPT = 'CUSTOM HOUSE RULES for this Recursive Language Model: answer in French. Inputs: {inputs}'

def test_fork_keeps_the_original_custom_system_prompt(server, tmp_path):
    srv = server(script(["One.\n" + repl("print(1)"), "Two.\n" + repl("print(2)"), repl("FINAL('ok')")]))
    res = rlm(srv, system_prompt=CUSTOM_PROMPT)("Count", context='abc')
    assert res.answer == 'ok'
    system = messages(root_requests(srv)[0])[0]
    assert system['role'] == 'system' and system['content'].startswith('CUSTOM HOUSE RULES')
    path = res.export(tmp_path/'sp.ipynb')
    srv2 = server(script(lambda body: "Fin.\n" + repl("FINAL('fin')") if turn(body) == 2 else Fault(400, message='unexpected')))
    f = rlm_nb.fork(path, at=1, model='openai/root', sub_model='openai/sub', api_base=srv2.url, verbose=False)
    assert f.answer == 'fin'
    assert messages(root_requests(srv2)[0])[0] == system
    assert f.session.system_prompt == res.session.system_prompt


def test_export_of_an_input_with_a_lone_surrogate_is_a_one_line_error_and_leaves_nothing(tmp_path):
    from rlm_nb.lm import ScriptedLM  # in-process models: a lone surrogate in the prompt cannot be sent over HTTP
    root = ScriptedLM(["Measure.\n" + repl("print(len(context))"), repl("FINAL('ok')")])
    res = rlm_nb.RLM(root, ScriptedLM(lambda m: 'sub'), verbose=False)("How long?", context='name-\udcff.txt')
    assert res.stop_reason == 'final' and res.answer == 'ok' and res.session.cells[0].status == 'ok'
    (tmp_path/'out').mkdir()
    with pytest.raises(ValueError) as e: res.export(tmp_path/'out'/'sur.ipynb')
    msg = str(e.value)
    assert not isinstance(e.value, UnicodeError), f"a raw {type(e.value).__name__} from the writer: {msg}"
    assert 'Unicode' in msg and "'\\udcff'" in msg, msg  # says what is wrong, and shows the character
    assert '\n' not in msg.strip() and len(msg) < 500, msg
    assert listing(tmp_path/'out') == []
