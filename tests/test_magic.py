"""The `%%rlm` magic, driven in a real IPython InteractiveShell in this process.

Each run starts a real RLM kernel (separate from the shell) and its model traffic is real HTTP to a ScriptedServer:
the model is 'openai/scripted' (or another 'openai/...' name) with `%config RLMMagics.api_base = server.url`."""
import os, re, threading, time
from html.parser import HTMLParser
import nbformat, pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config
import rlm_nb.core
from rlm_nb.core import RLMResult
from rlm_nb.magic import interpolate, resolve_inputs
from rlm_nb.testing import ScriptedServer
from helpers import repl, script, is_root, is_fallback, turn, first_user, root_requests, sub_requests

pytestmark = pytest.mark.timeout(240)
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'


# ---------------------------------------------------------------------------------------------------------------
# The shell

@pytest.fixture(scope='module')
def shell(tmp_path_factory):
    "One InteractiveShell for the module, with rlm_nb loaded; no history file, IPython dir in a temporary folder."
    mp = pytest.MonkeyPatch()
    mp.setenv('IPYTHONDIR', str(tmp_path_factory.mktemp('ipython')))
    cfg = Config()
    cfg.HistoryManager.enabled = False
    ip = InteractiveShell.instance(config=cfg)
    ip.run_line_magic('load_ext', 'rlm_nb')
    yield ip
    InteractiveShell.clear_instance()
    mp.undo()


def magics(ip): return ip.magics_manager.registry['RLMMagics']


def configure(ip, **values):
    "Reset every RLMMagics setting to its default, then run `%config RLMMagics.<name> = <value>` for each of `values`."
    m = magics(ip)
    for name in m.trait_names(config=True):
        m.set_trait(name, m.trait_defaults(name))
    for name, value in values.items():
        ip.run_line_magic('config', f"RLMMagics.{name} = {value!r}")


@pytest.fixture
def ip(shell, monkeypatch):
    "The shell with default settings, no RLM_MODEL, and the user namespace restored after the test."
    monkeypatch.delenv('RLM_MODEL', raising=False)
    configure(shell)
    before = dict(shell.user_ns)
    yield shell
    for k in set(shell.user_ns) - set(before): del shell.user_ns[k]
    shell.user_ns.update(before)


def run(ip, cell: str):
    "Run a cell; returns (ExecutionResult, captured stdout/stderr/display outputs)."
    with capture_output() as cap:
        r = ip.run_cell(cell)
    return r, cap


@pytest.fixture
def no_kernel(monkeypatch):
    "Records every kernel start, and starts none."
    started = []
    def start(self):
        started.append(self)
        raise AssertionError('a kernel was started')
    monkeypatch.setattr(rlm_nb.core.KernelREPL, 'start', start)
    return started


def assert_one_line_usage_error(r, cap, *needles):
    err = r.error_in_exec
    assert isinstance(err, UsageError), f"expected a UsageError, got {err!r}\nstderr: {cap.stderr}"
    msg = str(err)
    assert '\n' not in msg.strip(), f"the error is not one line: {msg!r}"
    for n in needles: assert n in msg, f"{n!r} not in {msg!r}"
    shown = [l for l in cap.stderr.splitlines() if l.strip()]
    assert len(shown) == 1 and shown[0].startswith('UsageError:') and 'Traceback' not in cap.stderr, cap.stderr
    return msg


# a minimal HTML tree: the root element's tag and attributes, and all elements
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []
    def handle_starttag(self, tag, attrs): self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list:
    p = _Tags(); p.feed(html); p.close()
    return p.tags


def timeline_threads(): return [t for t in threading.enumerate() if t.name == 'rlm_nb-timeline' and t.is_alive()]


# ---------------------------------------------------------------------------------------------------------------
# One full run with the widget: interpolation, -c in every form, -o, --export

DOC = 'the quick brown fox jumps over the lazy dog'
SECRET = 'notebook-only-value-7731'
LIST_VARS = "print('names:', sorted(k for k in dir() if not k.startswith('_')))"


@pytest.fixture(scope='module')
def full_run(shell, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('magic')
    data = tmp / 'sales_2024.txt'
    data.write_text('jan 10\nfeb 20\n')
    export = tmp / 'session.ipynb'
    turn1 = "Let me look at the inputs.\n" + repl(f"""
        {LIST_VARS}
        print('doc:', doc)
        print('notes:', type(notes).__name__, notes)
        print('file:', type(sales_2024).__name__, repr(sales_2024))
        first = llm_query('First word of: ' + doc)
        print('sub:', first)
    """)
    srv = ScriptedServer(script([turn1, repl("FINAL(len(doc))")], sub=lambda p: 'the')).start()
    try:
        configure(shell, model='openai/scripted', api_base=srv.url)
        shell.user_ns.update(doc=DOC, numbers=[3, 1, 2], who='Bob', notebook_only_secret=SECRET)
        shell.user_ns.pop('_rlm', None)
        cell = (f"%%rlm -c doc -c notes=numbers -c {data} -o answer_a --export {export}\n"
                "How many characters are in the doc, {who}? Reply as {{\"n\": N}}.")
        r, cap = run(shell, cell)
        threads_after = wait_for(lambda: not timeline_threads()) or timeline_threads()
    finally:
        srv.stop()
    assert r.error_in_exec is None, f"%%rlm failed: {r.error_in_exec!r}\n{cap.stderr}"
    res = shell.user_ns.get('answer_a')
    out = dict(res=res, srv=srv, cap=cap, export=export, data=data, rlm_set='_rlm' in shell.user_ns, threads_after=threads_after)
    for k in ('doc', 'numbers', 'who', 'notebook_only_secret', 'answer_a'): shell.user_ns.pop(k, None)
    return out


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline: time.sleep(0.05)
    return pred()


def test_question_interpolates_variables_and_keeps_double_braces_literal(full_run):
    res, srv = full_run['res'], full_run['srv']
    first = first_user(root_requests(srv)[0])
    assert 'Question: How many characters are in the doc, Bob? Reply as {"n": N}.' in first, first
    assert '{who}' not in first and '{{' not in first
    assert res.session.query == 'How many characters are in the doc, Bob? Reply as {"n": N}.'


def test_c_variable_arrives_in_the_kernel_under_its_name(full_run):
    res = full_run['res']
    assert res.stop_reason == 'final'
    assert res.answer == str(len(DOC))
    assert f'doc: {DOC}' in res.session.cells[0].text


def test_c_file_and_c_name_equals_var_and_repeated_c(full_run):
    res = full_run['res']
    text = res.session.cells[0].text
    assert 'notes: list [3, 1, 2]' in text  # -c notes=numbers: the value of `numbers`, named notes
    assert "file: str 'jan 10\\nfeb 20\\n'" in text  # -c path/to/sales_2024.txt: read by the kernel, named after the stem
    assert [i['name'] for i in res.session.inputs] == ['doc', 'notes', 'sales_2024']
    first = first_user(root_requests(full_run['srv'])[0])
    assert '`doc`' in first and '`notes`' in first and '`sales_2024`' in first


def test_user_variables_do_not_leak_into_the_kernel(full_run):
    text = full_run['res'].session.cells[0].text
    names = eval(re.search(r"names: (\[.*?\])", text)[1])
    for name in ('doc', 'notes', 'sales_2024'): assert name in names
    for name in ('notebook_only_secret', 'who', 'numbers', 'answer_a'): assert name not in names, f"{name} leaked: {names}"
    assert SECRET not in str(full_run['srv'].requests)


def test_o_stores_the_result_under_that_name(full_run):
    res = full_run['res']
    assert isinstance(res, RLMResult)
    assert not full_run['rlm_set'], '-o answer_a also set _rlm'


def test_the_configured_model_and_api_base_carry_the_traffic(full_run):
    srv = full_run['srv']
    assert len(root_requests(srv)) == 2 and len(sub_requests(srv)) == 1
    assert {r['body']['model'] for r in srv.requests} == {'scripted'}


def test_export_writes_a_valid_notebook(full_run):
    path, res = full_run['export'], full_run['res']
    assert f"exported to {path}" in full_run['cap'].stdout
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    last = nb.cells[-1]
    assert last.cell_type == 'markdown' and 'rlm-nb-final' in last.metadata.get('tags', [])
    assert res.answer in last.source
    code = [c.source for c in nb.cells if c.cell_type == 'code']
    assert any('llm_query' in c for c in code) and any('FINAL(len(doc))' in c for c in code)


def test_widget_is_displayed_then_replaced_by_the_static_timeline(full_run):
    cap = full_run['cap']
    outs = cap.outputs
    assert outs, 'nothing was displayed'
    first, last = outs[0], outs[-1]
    assert WIDGET_MIME in first.data and not first.update, f"the live timeline was not displayed first: {first.data.keys()}"
    display_id = first.transient.get('display_id')
    assert display_id, 'the live timeline was displayed without a display_id, so it cannot be replaced'
    assert last.update and last.transient.get('display_id') == display_id, 'the display was not updated in place'
    assert 'text/html' in last.data and WIDGET_MIME not in last.data
    html = last.data['text/html']
    root_tag, root_attrs = tags(html)[0]
    assert root_tag == 'div' and 'rlm-timeline' in root_attrs.get('class', '').split()
    assert root_attrs.get('data-status') == 'final'
    assert [o for o in outs if not o.update] == [first], 'more than one new display for one %%rlm cell'
    assert full_run['threads_after'] is True, f"timeline threads left running: {full_run['threads_after']}"


# ---------------------------------------------------------------------------------------------------------------
# One run without the widget, model from RLM_MODEL, stopped by --max-iterations 1

@pytest.fixture(scope='module')
def env_run(shell):
    def root(body):
        if is_fallback(body): return "Best guess from the count.\nFINAL(about 43)"
        return repl(f"print('looking {turn(body)}', len(doc))")
    srv = ScriptedServer(script(root)).start()
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv('RLM_MODEL', 'openai/from-env')
        configure(shell, api_base=srv.url)
        shell.user_ns['doc'] = DOC
        shell.user_ns.pop('_rlm', None)
        r, cap = run(shell, "%%rlm -c doc --no-widget --max-iterations 1\nHow long is the doc?")
    finally:
        mp.undo(); srv.stop()
    assert r.error_in_exec is None, f"%%rlm failed: {r.error_in_exec!r}\n{cap.stderr}"
    res = shell.user_ns.pop('_rlm', None)
    shell.user_ns.pop('doc', None)
    return dict(res=res, srv=srv, cap=cap)


def test_max_iterations_budget_stop_and_default_output_name(env_run):
    res = env_run['res']
    assert isinstance(res, RLMResult), 'the result was not stored in _rlm'
    assert res.stop_reason == 'max_iterations'
    assert res.iterations == 1 and res.answer == 'about 43'
    assert res.session.settings['max_iterations'] == 1
    assert len(root_requests(env_run['srv'])) == 2 and is_fallback(root_requests(env_run['srv'])[1])


def test_model_from_the_RLM_MODEL_environment_variable(env_run):
    assert {r['body']['model'] for r in env_run['srv'].requests} == {'from-env'}
    assert env_run['res'].session.model == 'openai/from-env'


def test_no_widget_prints_progress_to_stderr_and_displays_the_result(env_run):
    cap = env_run['cap']
    lines = [l for l in cap.stderr.splitlines() if l.startswith('[rlm]')]
    assert any(l.startswith('[rlm] iteration 1:') for l in lines), cap.stderr
    assert any(l.startswith('[rlm] done: max_iterations') for l in lines), cap.stderr
    assert not cap.stdout.strip() or '[rlm]' not in cap.stdout
    outs = cap.outputs
    assert len(outs) == 1, f"expected one display, got {[o.data.keys() for o in outs]}"
    assert WIDGET_MIME not in outs[0].data and not outs[0].update
    root_tag, root_attrs = tags(outs[0].data['text/html'])[0]
    assert 'rlm-timeline' in root_attrs.get('class', '') and root_attrs.get('data-status') == 'max_iterations'
    assert 'about 43' in outs[0].data['text/plain']


# ---------------------------------------------------------------------------------------------------------------
# --max-cost, with a model litellm has a price for (served by the scripted server)

def test_max_cost_stops_a_priced_session(ip, server):
    srv = server(script(lambda body: repl(f"print('turn {turn(body)}')")))
    configure(ip, api_base=srv.url)
    r, cap = run(ip, "%%rlm -m openai/gpt-4o-mini --max-cost 0.00005 --no-widget\nSpend a little.")
    assert r.error_in_exec is None, f"{r.error_in_exec!r}\n{cap.stderr}"
    res = ip.user_ns['_rlm']
    assert res.session.settings['max_cost'] == 0.00005
    assert res.stop_reason == 'max_cost'
    assert res.cost is not None and res.cost >= 0.00005
    assert res.iterations == 1 and len(root_requests(srv)) == 1  # one ~500-token call at $0.15/M is over the limit
    assert {r['body']['model'] for r in srv.requests} == {'gpt-4o-mini'}


# ---------------------------------------------------------------------------------------------------------------
# Mistakes: one line, before any kernel starts or any request is sent

def test_unknown_placeholder_is_a_one_line_usage_error(ip, server, no_kernel):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    r, cap = run(ip, "%%rlm\nWhat does {nobody_has_this} say?")
    assert_one_line_usage_error(r, cap, 'nobody_has_this')
    assert not no_kernel and not srv.requests


@pytest.mark.parametrize('spec, needle', [('no_such_variable', "'no_such_variable'"),
                                          ('{tmp}/nowhere/missing.txt', 'missing.txt'),
                                          ('name={tmp}/missing.csv', 'missing.csv')])
def test_bad_c_is_a_one_line_usage_error(ip, server, no_kernel, tmp_path, spec, needle):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    ip.user_ns['doc'] = DOC
    r, cap = run(ip, f"%%rlm -c doc -c {spec.format(tmp=tmp_path)}\nq")
    msg = assert_one_line_usage_error(r, cap, needle)
    assert '-c' in msg
    assert not no_kernel and not srv.requests


def test_no_model_anywhere_is_a_usage_error_naming_config_and_RLM_MODEL(ip, server, no_kernel):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, api_base=srv.url)
    r, cap = run(ip, "%%rlm\nWhat is it?")
    assert_one_line_usage_error(r, cap, '%config', 'RLM_MODEL')
    assert not no_kernel and not srv.requests


def test_empty_question_is_a_usage_error(ip, no_kernel):
    configure(ip, model='openai/scripted', api_base='http://127.0.0.1:9/v1')
    r, cap = run(ip, "%%rlm\n   \n")
    assert_one_line_usage_error(r, cap, 'empty')
    assert not no_kernel


@pytest.mark.parametrize('name', ['class', 'llm_query', 'print'])
def test_bad_input_name_is_a_one_line_usage_error(ip, server, no_kernel, name):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    ip.user_ns['doc'] = DOC
    r, cap = run(ip, f"%%rlm --no-widget -c {name}=doc\nq")
    assert_one_line_usage_error(r, cap, repr(name))
    assert not no_kernel and not srv.requests


def test_a_mistake_caught_when_the_run_starts_leaves_no_dead_widget(ip, server, no_kernel):
    "README: a set-up mistake is one line of explanation *before anything starts*; no timeline for a run that never ran."
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)  # the widget is on by default
    ip.user_ns['doc'] = DOC
    r, cap = run(ip, "%%rlm -c llm_query=doc\nq")
    assert_one_line_usage_error(r, cap, "'llm_query'")
    assert not no_kernel and not srv.requests
    shown = [(o.update, sorted(o.data)) for o in cap.outputs]
    assert not shown, f"a run that never started left displays behind (a closed live widget): {shown}"


@pytest.mark.parametrize('flag', ['--max-iterations 0', '--max-iterations -1', '--max-cost 0', '--max-cost -1'])
def test_nonsense_budget_flags_are_one_line_usage_errors(ip, server, no_kernel, flag):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    r, cap = run(ip, f"%%rlm --no-widget {flag}\nq")
    assert_one_line_usage_error(r, cap, flag.split()[0][2:].replace('-', '_'))
    assert not no_kernel and not srv.requests


def test_output_name_that_is_not_a_variable_name_is_a_usage_error(ip, server, no_kernel):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    r, cap = run(ip, "%%rlm --no-widget -o 1bad\nq")
    assert_one_line_usage_error(r, cap, '1bad')
    assert not no_kernel and not srv.requests


# ---------------------------------------------------------------------------------------------------------------
# The helpers behind the flags

def test_interpolate_formats_values_and_leaves_everything_else_alone():
    ns = {'n': 42, 'items': [1, 2], 'name': 'x'}
    assert interpolate("{n} and {items}, {{n}} {{ {name} }}", ns) == "42 and [1, 2], {n} { x }"
    assert interpolate("{a.b} {n!r} {0} {} {n:>4} {", ns) == "{a.b} {n!r} {0} {} {n:>4} {"
    with pytest.raises(UsageError, match="'missing'"): interpolate("{missing}", ns)


def test_resolve_inputs_names_files_after_their_stem(tmp_path):
    files = {}
    for fname in ('my-data.csv', '2024.txt', 'input.txt', 'class.json', 'plain.txt'):
        (tmp_path / fname).write_text('x')
        files[fname] = str(tmp_path / fname)
    got = resolve_inputs([files[f] for f in files], {})
    assert list(got) == ['my_data', '_2024', 'input_file', 'class_file', 'plain']
    assert all(v == tmp_path / f for v, f in zip(got.values(), files))
    ns = {'df': [1], 'plain': 'a notebook variable'}
    got = resolve_inputs(['df', 'rows=df', f"notes={files['plain.txt']}", 'plain'], ns)
    assert got == {'df': [1], 'rows': [1], 'notes': tmp_path / 'plain.txt', 'plain': 'a notebook variable'}


# ---------------------------------------------------------------------------------------------------------------
# %rlm alone: usage and the current defaults

def test_line_magic_without_a_question_prints_usage_and_defaults(ip, no_kernel):
    configure(ip, model='openai/shown-model', api_base='http://127.0.0.1:9/v1', max_iterations=7)
    r, cap = run(ip, "%rlm")
    assert r.error_in_exec is None
    out = cap.stdout
    assert '-c NAME_OR_PATH' in out and '--max-iterations' in out and '--no-widget' in out
    assert 'Defaults' in out and '%config RLMMagics' in out
    assert re.search(r"model\s+'openai/shown-model'", out), out
    assert re.search(r"api_base\s+http://127.0.0.1:9/v1", out) and re.search(r"max_iterations\s+7", out), out
    assert not no_kernel


def test_line_magic_defaults_show_a_model_from_RLM_MODEL(ip, monkeypatch, no_kernel):
    monkeypatch.setenv('RLM_MODEL', 'openai/env-model')
    r, cap = run(ip, "%rlm")
    assert "'openai/env-model' (from RLM_MODEL)" in cap.stdout, cap.stdout


# ---------------------------------------------------------------------------------------------------------------
# Found in review: each of these failed before its fix

@pytest.mark.parametrize('specs, name', [('-c {tmp}/a/log.txt -c {tmp}/b/log.txt', 'log'),
                                         ('-c data=v1 -c data=v2', 'data')])
def test_the_same_input_name_twice_is_a_one_line_usage_error(ip, server, no_kernel, tmp_path, specs, name):
    for sub in ('a', 'b'):
        (tmp_path/sub).mkdir()
        (tmp_path/sub/'log.txt').write_text(f'{sub} log')
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    ip.user_ns.update(v1='one', v2='two')
    r, cap = run(ip, f"%%rlm --no-widget {specs.format(tmp=tmp_path)}\nq")
    assert_one_line_usage_error(r, cap, repr(name))
    assert not no_kernel and not srv.requests


def test_a_file_named_query_becomes_an_input_named_query(ip, server, tmp_path):
    (tmp_path/'query.txt').write_text('hello from the file')
    srv = server(script([repl("FINAL(query)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    r, cap = run(ip, f"%%rlm --no-widget -c {tmp_path}/query.txt\nWhat does it say?")
    assert r.error_in_exec is None, f"{r.error_in_exec!r}\n{cap.stderr}"
    res = ip.user_ns['_rlm']
    assert res.stop_reason == 'final' and res.answer == 'hello from the file'
    assert [i['name'] for i in res.session.inputs] == ['query'] and res.session.query == 'What does it say?'


@pytest.mark.parametrize('name', ['_resume', '_parent'])
def test_an_input_name_starting_with_an_underscore_is_a_one_line_usage_error(ip, server, no_kernel, name):
    srv = server(script([repl("FINAL(1)")]))
    configure(ip, model='openai/scripted', api_base=srv.url)
    ip.user_ns['doc'] = DOC
    r, cap = run(ip, f"%%rlm --no-widget -c {name}=doc\nq")
    assert_one_line_usage_error(r, cap, repr(name), 'underscore')
    assert not no_kernel and not srv.requests
