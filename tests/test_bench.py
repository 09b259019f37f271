"""The research bench: seeded tasks whose gold answers are recomputed here independently, every method on every suite,
resume after the run process is killed, the kernel bound, and one suite end to end over real HTTP."""
import json, os, re, signal, subprocess, sys, textwrap, threading, time
from collections import Counter
from datetime import datetime
from pathlib import Path
import psutil, pytest
from rlm_nb.bench.tasks import (make_tasks, save_tasks, load_tasks, score, niah, oolong, oolong_pairs, multihop, LABELS,
                                SUITES, OOLONG_KINDS)
from rlm_nb.bench.methods import Attempt, scripted_model, scripted_server_reply
from rlm_nb.bench.runner import run, read_results
from conftest import kernel_processes

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Tasks: determinism, scorers, gold answers recomputed from the saved records without our code

def test_same_seed_same_tasks_in_another_process_and_other_seeds_differ():
    here = [t.to_dict() for s in SUITES for t in make_tasks(s, [600, 1500], n=2, seed=5)]
    code = ("import json; from rlm_nb.bench.tasks import make_tasks, SUITES; "
            "print(json.dumps([t.to_dict() for s in SUITES for t in make_tasks(s, [600, 1500], n=2, seed=5)]))")
    env = {**os.environ, 'PYTHONHASHSEED': '123', 'PYTHONPATH': str(ROOT)}
    there = json.loads(subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True).stdout)
    assert here == json.loads(json.dumps(here)) == there
    for s in SUITES:
        a, b = make_tasks(s, [1500], n=1, seed=1)[0], make_tasks(s, [1500], n=1, seed=2)[0]
        assert a.context != b.context and a.id != b.id
        assert abs(len(a.context) / 4 - 1500) < 0.15 * 1500 # sizes are chars / 4


def test_scorers_on_known_cases():
    t_num = oolong(800, seed=2); assert t_num.metric == 'numeric'
    g = t_num.answer
    assert score(t_num, str(g)) == 1.0 and score(t_num, f'About {g + 2} instances') == 0.75 ** 2 and score(t_num, 'many') == 0.0
    t_lab = oolong(800, seed=0); assert t_lab.metric == 'exact'
    assert score(t_lab, f'Answer: {t_lab.answer.upper()}.') == 1.0 and score(t_lab, 'nothing') == 0.0 and score(t_lab, None) == 0.0
    t_pairs = oolong_pairs(1500, seed=1)
    gold = [tuple(p) for p in t_pairs.answer]
    assert len(gold) >= 2
    assert score(t_pairs, ', '.join(f'({b}, {a})' for a, b in gold)) == 1.0 # order inside a pair does not matter
    half = gold[:len(gold) // 2]
    assert score(t_pairs, str(half)) == pytest.approx(2 * len(half) / (len(half) + len(gold)))
    assert score(t_pairs, '(1, 2)') == 0.0


def _date(s): return datetime.strptime(s, '%b %d, %Y')

def _oolong_gold(q, recs):
    "Independent: the answer to an oolong question, read from its wording and the labelled records."
    if m := re.search(r'of user (\d+)', q): recs = [r for r in recs if r['user'] == int(m[1])]
    if m := re.search(r'dated from (.+?) to (.+?) \(inclusive\)', q):
        recs = [r for r in recs if _date(m[1]) <= _date(r['date']) <= _date(m[2])]
    c = Counter(r['label'] for r in recs)
    n = {lab: c.get(lab, 0) for lab in LABELS}
    named = re.findall(r"the label ([a-z ]+?)(?: more common|\?|$)", q.split('given in the text. ')[1])
    if 'most common' in q: return max(n, key=n.get)
    if 'least common' in q: return min(n, key=n.get)
    if 'How many' in q: return n[named[0]]
    x, y = n[named[0]], n[named[1]]
    return 'more common' if x > y else 'less common' if x < y else 'as common'

def _pairs_gold(q, recs):
    users = sorted({r['user'] for r in recs})
    if m := re.search(r"both users have at least one instance labelled '(.+?)' or '(.+?)'(?: dated after (.+?))?\. Write", q):
        ok = [u for u in users if any(r['user'] == u and r['label'] in (m[1], m[2]) and (not m[3] or _date(r['date']) > _date(m[3])) for r in recs)]
        return sorted([a, b] for i, a in enumerate(ok) for b in ok[i + 1:])
    m = re.search(r"one user has an instance labelled '(.+?)' and the other user has an instance labelled '(.+?)'", q)
    has = lambda u, lab: any(r['user'] == u and r['label'] == lab for r in recs)
    return sorted([a, b] for i, a in enumerate(users) for b in users[i + 1:]
                  if (has(a, m[1]) and has(b, m[2])) or (has(b, m[1]) and has(a, m[2])))

def test_gold_answers_recomputed_from_the_saved_records(tmp_path):
    tasks = ([oolong(1200, seed=s) for s in range(2 * len(OOLONG_KINDS))] + [oolong_pairs(1500, seed=s) for s in range(4)]
             + [niah(1000, seed=s) for s in range(3)] + [multihop(1500, seed=s) for s in range(2)])
    save_tasks(tasks, tmp_path/'tasks.jsonl')
    kinds = set()
    for line in (tmp_path/'tasks.jsonl').read_text().splitlines(): # plain JSON from here on
        d = json.loads(line); q, md = d['question'], d['metadata']
        if d['suite'] in ('oolong', 'oolong_pairs'):
            recs = md['records']
            assert d['context'] == '\n'.join(f"Date: {r['date']} || User: {r['user']} || Instance: {r['text']}" for r in recs)
            assert not any(lab in d['context'].lower() for lab in ('abbreviation', 'human being', 'numeric value', 'abstract concept'))
            top = Counter(r['user'] for r in recs).most_common()
            assert top[0][1] > len(recs) / len(top) # users are skewed: the first has more than an equal share
            if d['suite'] == 'oolong':
                kinds.add(md['spec']['kind'])
                assert _oolong_gold(q, recs) == d['answer'], q
            else: assert _pairs_gold(q, recs) == sorted(d['answer']), q
        elif d['suite'] == 'niah':
            key = re.search(r'magic number for (\S+?)\?', q)[1]
            found = re.findall(r'The special magic number for (\S+) is (\d+)\.', d['context'])
            assert found == [(key, d['answer'])]
            pos = d['context'].index(found[0][1]) / len(d['context'])
            assert abs(pos - md['depth']) < 0.05
        else:
            fact = lambda pat: re.search(pat, d['context'])[1]
            who = re.search(r'company where (.+?) works\?', q)[1]
            co = fact(re.escape(who) + r' works as an engineer at (\w+)\.')
            city = fact(r'The headquarters of ' + co + r' are in the city of ([\w ]+?)\.')
            want = fact(r'The city of ' + city + r' lies in the country of (\w+)\.') if 'which country' in q else city
            assert want == d['answer']
            docs = [i for i, doc in enumerate(d['context'].split('### Document ')) if who + ' works' in doc or f'headquarters of {co} ' in doc]
            assert len(docs) == 2 # the facts sit in different documents
    assert kinds == set(OOLONG_KINDS)


def test_load_tasks_reads_a_users_jsonl_with_context_paths(tmp_path):
    (tmp_path/'doc.txt').write_text('The vault code is 4417.')
    (tmp_path/'mine.jsonl').write_text(json.dumps({'id': 'a', 'context_path': 'doc.txt', 'question': 'What is the vault code?',
                                                   'answer': 4417, 'metric': 'numeric'}) + '\n\n')
    t, = load_tasks(tmp_path/'mine.jsonl')
    assert (t.id, t.context, t.metric, score(t, '4417')) == ('a', 'The vault code is 4417.', 'numeric', 1.0)
    (tmp_path/'bad.jsonl').write_text(json.dumps({'question': 'q'}) + '\n')
    with pytest.raises(ValueError, match=r'bad.jsonl:1: a task needs answer, context or context_path'): load_tasks(tmp_path/'bad.jsonl')


# ---------------------------------------------------------------------------------------------------------------
# Methods on every suite, and the runner

def test_each_method_on_each_suite_with_the_scripted_solver(tmp_path):
    tasks = [make_tasks(s, [800], n=1, seed=1)[0] for s in SUITES]
    res = run(tasks, ['rlm', 'rlm_nosub', 'direct', 'summary'], out=tmp_path, concurrency=2, progress=False)
    assert len(res) == 16 and not (tmp_path/'errors.jsonl').exists()
    by = {(a.suite, a.method): a for a in res}
    for s in SUITES:
        assert by[s, 'rlm'].score == 1.0 and by[s, 'rlm'].stop_reason == 'final'
        assert by[s, 'rlm'].tokens_sub > 0 and by[s, 'rlm'].tokens_root > 0
        assert by[s, 'rlm_nosub'].stop_reason == 'max_llm_calls' and by[s, 'rlm_nosub'].tokens_sub == 0
        assert by[s, 'direct'].stop_reason == 'answered' and by[s, 'direct'].score == 1.0 # fits the scripted window
        assert by[s, 'summary'].calls == 2
        nb = Path(by[s, 'rlm'].session)
        assert nb.exists() and nb.with_suffix('.jsonl').exists() and nb.parent == tmp_path/'sessions'
    assert by['oolong', 'rlm_nosub'].score < 1 or by['oolong_pairs', 'rlm_nosub'].score < 1 # reading needs sub-calls
    assert {json.loads(l)['id'] for l in (tmp_path/'tasks.jsonl').read_text().splitlines()} == {t.id for t in tasks}
    assert all(json.loads(l)['score'] is not None for l in (tmp_path/'results.jsonl').read_text().splitlines())


def test_direct_past_the_window_is_truncated_and_marked(tmp_path):
    t = niah(4000, seed=3, depth=0.9)
    a, = run([t], ['direct'], out=tmp_path, window=2000, progress=False)
    assert a.stop_reason == 'truncated' and a.score == 0.0 and a.tokens_root < 2100


def test_a_failing_method_is_kept_out_of_results_and_retried(tmp_path):
    calls = []
    def flaky(task, **models):
        calls.append(task.id)
        if len(calls) == 1: raise RuntimeError('provider down')
        return Attempt(task.id, answer=task.answer, stop_reason='answered')
    t = niah(500, seed=1)
    assert run([t], [flaky], out=tmp_path, progress=False) == []
    assert 'provider down' in (tmp_path/'errors.jsonl').read_text() and not (tmp_path/'results.jsonl').exists()
    a, = run([t], [flaky], out=tmp_path, progress=False)
    assert a.score == 1.0 and len(read_results(tmp_path)) == 1


RUNNER = textwrap.dedent("""
    import sys
    from rlm_nb.bench import make_tasks, run, scripted_model
    run(make_tasks('niah', [600], n=8), ['rlm'], model=scripted_model(delay=0.3), out=sys.argv[1], concurrency=2, progress=False)
""")

def test_resume_after_the_run_process_is_killed(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', RUNNER, str(out)], env={**os.environ, 'PYTHONPATH': str(ROOT)})
    results, kids = out/'results.jsonl', set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        try: kids |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        except psutil.NoSuchProcess: break
        time.sleep(0.05)
    kids |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
    p.send_signal(signal.SIGKILL); p.wait()
    before = results.read_text().splitlines()
    assert 3 <= len(before) < 8, 'the run should have been killed mid-way'
    res = run(make_tasks('niah', [600], n=8), ['rlm'], out=out, model=scripted_model(), concurrency=2, progress=False)
    after = results.read_text().splitlines()
    assert after[:len(before)] == before # no finished attempt lost or rewritten
    keys = [tuple(json.loads(l)[k] for k in ('task_id', 'method', 'model')) for l in after]
    assert len(keys) == len(set(keys)) == 8 and len(res) == 8
    assert all(a.score == 1.0 for a in res)
    deadline = time.monotonic() + 15 # the killed run's kernels watch their parent and exit
    while time.monotonic() < deadline and any(psutil.pid_exists(k) and 'ipykernel' in ' '.join(psutil.Process(k).cmdline()) for k in kids):
        time.sleep(0.2)
    assert not [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE
                and 'ipykernel' in ' '.join(psutil.Process(k).cmdline())]


def live_kernels() -> int:
    "Kernels, not processes: a sandboxed kernel is two bwrap processes and the python one."
    n = 0
    for p in kernel_processes():
        try: n += p.status() != psutil.STATUS_ZOMBIE and not os.path.basename(p.cmdline()[0]).startswith('bwrap')
        except (psutil.NoSuchProcess, psutil.ZombieProcess, IndexError): pass
    return n

def test_ctrl_c_records_the_attempts_in_flight_then_stops(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', RUNNER, str(out)], env={**os.environ, 'PYTHONPATH': str(ROOT)},
                         stderr=subprocess.PIPE, text=True)
    results, deadline = out/'results.jsonl', time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 2): time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode != 0 and 'interrupted: no new attempts' in err
    lines = results.read_text().splitlines()
    assert 2 <= len(lines) < 8 and all(json.loads(l)['score'] == 1.0 for l in lines)
    res = run(make_tasks('niah', [600], n=8), ['rlm'], out=out, model=scripted_model(), concurrency=2, progress=False)
    assert len(res) == 8 and len(results.read_text().splitlines()) == 8


@pytest.mark.parametrize('concurrency,warm', [(2, 0), (3, 1)])
def test_never_more_live_kernels_than_concurrency(tmp_path, concurrency, warm):
    seen, stop = [], threading.Event()
    def watch():
        while not stop.is_set(): seen.append(live_kernels()); time.sleep(0.02)
    w = threading.Thread(target=watch); w.start()
    try: res = run(make_tasks('niah', [600], n=6), ['rlm'], model=scripted_model(delay=0.2), out=tmp_path,
                   concurrency=concurrency, warm=warm, progress=False)
    finally: stop.set(); w.join()
    assert len(res) == 6 and all(a.score == 1.0 for a in res)
    # a kernel shutting down lingers for a moment: an over-count must last two samples (40 ms) to be a real one
    assert not any(a > concurrency and b > concurrency for a, b in zip(seen, seen[1:])), seen
    assert max(seen) >= 2 # attempts really overlapped


def test_oolong_end_to_end_over_http_with_a_whole_run_cost_cap(server, tmp_path):
    srv = server(scripted_server_reply)
    tasks = make_tasks('oolong', [800], n=2)
    kw = dict(model='openai/root', sub_model='openai/sub', api_base=srv.url, price=(1.0, 2.0), progress=False)
    res = run(tasks, ['rlm', 'direct', 'summary'], out=tmp_path/'a', concurrency=3, **kw)
    assert len(res) == 6 and all(a.score == 1.0 for a in res), [(a.method, a.answer, a.error) for a in res]
    assert all(a.cost > 0 and a.model == 'openai/root' for a in res)
    subs = [r['body'] for r in srv.requests if r['body']['model'] == 'sub']
    # every instance was classified over HTTP (the session's cache may answer some repeats)
    texts = {r['text'] for t in tasks for r in t.metadata['records']}
    assert {m['messages'][-1]['content'].split('Question: ')[-1] for m in subs} == texts
    assert sum(len({r['text'] for r in t.metadata['records']}) for t in tasks) <= len(subs) <= sum(len(t.metadata['records']) for t in tasks)
    rl = [a for a in res if a.method == 'rlm']
    assert all(a.metadata['sub_model'] == 'openai/sub' and a.tokens_sub > 0 for a in rl)
    capped = run(tasks, ['rlm', 'direct', 'summary'], out=tmp_path/'b', concurrency=1, max_cost=1e-9, **kw)
    assert len(capped) == 1 and len(read_results(tmp_path/'b')) == 1


def test_report_and_both_plots_from_a_finished_run(tmp_path):
    from rlm_nb.bench.analysis import report, plot_scaling, plot_cost, markdown_table
    run(make_tasks('oolong', [600, 12000], n=2), ['rlm', 'direct'], out=tmp_path, concurrency=2, progress=False)
    t = report(tmp_path)
    assert len(t) == 4 and set(t.n) == {2}
    row = lambda size, m: t[(t['size'] == size) & (t.method == m)].iloc[0]
    assert row(12000, 'rlm').score == 1.0 and row(12000, 'rlm').tokens_sub > 0
    assert row(12000, 'direct').stop_reasons == 'truncated×2' and row(600, 'direct').stop_reasons == 'answered×2'
    assert row(600, 'rlm').stop_reasons == 'final×2' and row(600, 'rlm').cost == 0.0
    md = markdown_table(t)
    assert md.count('\n') == 5 and '| oolong | 12000 | direct | scripted |' in md
    plot_scaling(tmp_path); plot_cost(tmp_path)
    for name in ('scaling', 'cost'):
        assert (tmp_path/'plots'/f'{name}.png').read_bytes()[:4] == b'\x89PNG'
        assert '<svg' in (tmp_path/'plots'/f'{name}.svg').read_text()[:500]


def test_cli_bench_run_then_report_with_plots(tmp_path, capsys):
    from rlm_nb.cli import main
    out = tmp_path/'cli'
    assert main(['bench', 'run', '--suite', 'oolong,niah', '--sizes', '600', '--n', '1', '--methods', 'rlm,direct',
                 '--scripted', '--quiet', '--concurrency', '2', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'scripted solver' in printed and '| oolong | 600 | rlm | scripted | 1 | 1 |' in printed
    assert main(['bench', 'report', str(out), '--plots']) == 0
    assert printed.split('\n', 1)[1].strip() in capsys.readouterr().out
    assert (out/'plots'/'scaling.svg').exists() and len(list((out/'sessions').glob('*.ipynb'))) == 2
    with pytest.raises(SystemExit): main(['bench', 'run', '--suite', 'nope', '--scripted', '--out', str(out)])
    assert 'unknown suite' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Reused kernels (opt-in): reset between sessions, discarded when they can't be, the bound kept

from rlm_nb.bench.runner import KernelRecycler, settings_of
from rlm_nb.kernel import cap_output_code
from rlm_nb.bridge import install_code
from rlm_nb.lm import ScriptedLM

SETUP = cap_output_code() + '\n' + install_code({'inputs': [], 'tools': []}) # what a session runs in its kernel first
PROBE = '''import os, sys, json, threading, builtins, comm
from concurrent.futures import ThreadPoolExecutor
sh = get_ipython()
print(json.dumps({'hooks': {k: len(v) for k, v in sh.events.callbacks.items()}, 'comms': len(comm.get_comm_manager().comms),
    'leaks': ['leak' in sh.user_ns, os.environ.get('RLM_LEAK'), '/leak' in sys.path, hasattr(builtins, 'leak')],
    'cwd': os.getcwd(), 'files': sorted(os.listdir()), 'count': sh.execution_count,
    'write': 'write' in vars(sys.stdout), 'init': threading.Thread.__init__.__qualname__,
    'submit': ThreadPoolExecutor.submit.__qualname__}))'''
LEAK = '''leak = 1
import os, sys, builtins
os.environ['RLM_LEAK'] = '1'; sys.path.append('/leak'); builtins.leak = 1
open('left.txt', 'w').write('x')
get_ipython().events.register('post_run_cell', lambda *a: None)'''

def in_thread(fn):
    "Run fn in a thread (as the runner runs attempts) and return its result."
    out = []
    t = threading.Thread(target=lambda: out.append(fn())); t.start(); t.join()
    return out[0]

def probe(k) -> dict:
    r = k.execute(PROBE)
    assert r.ok, r.text
    return json.loads(r.text)

def test_a_recycled_kernel_comes_back_reset_with_the_bridge_installed_once():
    with KernelRecycler() as rec:
        def two_sessions():
            k = rec.take(); k.prepare(SETUP)
            first, before = k.cwd, probe(k)
            assert k.execute(LEAK).ok and probe(k)['leaks'] == [True, '1', True, True]
            k.execute('x = 1'); k.shutdown() # the session's end: back to the recycler
            assert k.is_alive and not os.path.exists(first)
            k2 = rec.take(); k2.prepare(SETUP)
            after = probe(k2)
            k2.shutdown()
            return k2 is k, first, before, after
        same, first, before, after = in_thread(two_sessions)
    assert same and rec.started == 1 and rec.reused == 1 and rec.live == 0
    assert after['leaks'] == [False, None, False, False]
    assert after['cwd'] != first and after['files'] == [] # a new empty directory
    # the bridge and the output cap are installed once, not stacked on the last session's
    for k in ('hooks', 'comms', 'write', 'init', 'submit', 'count'): assert after[k] == before[k], k

def test_a_kernel_with_a_thread_still_running_is_shut_down_not_reused():
    with KernelRecycler() as rec:
        def session():
            k = rec.take(); k.prepare(SETUP)
            assert k.execute("import threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start()").ok
            k.shutdown()
            return k
        k = in_thread(session)
    assert not k.is_alive and rec.reused == 0 and rec.discarded == {'threads still running': 1} and rec.live == 0

def test_run_with_reused_kernels_keeps_the_bound_and_starts_fewer_kernels(tmp_path):
    seen, pids, stop = [], set(), threading.Event()
    def watch():
        while not stop.is_set():
            seen.append(live_kernels())
            pids.update(p.pid for p in kernel_processes() if 'ipykernel' in ' '.join(p.cmdline()[:3]))
            time.sleep(0.02)
    w = threading.Thread(target=watch); w.start()
    try: res = run(make_tasks('niah', [600], n=6), ['rlm'], model=scripted_model(delay=0.1), out=tmp_path,
                   concurrency=2, reuse_kernels=True, progress=False)
    finally: stop.set(); w.join()
    assert len(res) == 6 and all(a.score == 1.0 for a in res)
    assert not any(a > 2 and b > 2 for a, b in zip(seen, seen[1:])), seen
    assert 1 <= len(pids) <= 2, pids # two kernels served six sessions
    for nb in (tmp_path/'sessions').glob('*.ipynb'): # every session's cells count from 1, as in a fresh kernel
        counts = [c['execution_count'] for c in json.loads(nb.read_text())['cells'] if c.get('execution_count')]
        assert counts == [1, 2], nb.name
    with pytest.raises(ValueError, match='choose one'): run(make_tasks('niah', [600], n=1), ['rlm'], out=tmp_path/'x', warm=1, reuse_kernels=True)


# ---------------------------------------------------------------------------------------------------------------
# Keys: the sub-model and the options a method reads are part of what makes an attempt

def echo_sub(task, model, sub_model, max_depth=1, **_):
    "A method that reads the sub-model and max_depth: its answer says which it got."
    from rlm_nb.lm import model_name
    return Attempt(task.id, answer=f'{model_name(sub_model)} {max_depth}', stop_reason='answered')

def ignores_sub(task, model, **_): return Attempt(task.id, answer='x', stop_reason='answered')

def test_runs_that_differ_by_sub_model_or_option_do_not_collide(tmp_path):
    tasks = make_tasks('niah', [600], n=2)
    kw = dict(out=tmp_path, model=scripted_model(), progress=False)
    sub = lambda name: ScriptedLM(lambda m: 'x', model=name)
    a = run(tasks, [echo_sub, ignores_sub], sub_model=sub('sub-a'), **kw)
    b = run(tasks, [echo_sub, ignores_sub], sub_model=sub('sub-b'), **kw)
    c = run(tasks, [echo_sub], sub_model=sub('sub-b'), max_depth=2, **kw)
    assert {x.answer for x in a if x.method == 'echo_sub'} == {'sub-a 1'} and {x.answer for x in b if x.method == 'echo_sub'} == {'sub-b 1'}
    assert {x.answer for x in c} == {'sub-b 2'} and c[0].settings == {'sub_model': 'sub-b', 'max_depth': 2}
    lines = read_results(tmp_path)
    # ignores_sub names no sub_model: its key has none, so the second run found it done
    assert len(lines) == 2 * 3 + 2 and sum(x.method == 'ignores_sub' for x in lines) == 2
    assert len(run(tasks, [echo_sub], sub_model=sub('sub-a'), **kw)) == 2 and len(read_results(tmp_path)) == 8 # resumed, not redone
    from rlm_nb.bench.analysis import report
    t = report(tmp_path)
    assert len(t) == 4 and set(t.n) == {2} and set(t.settings) == {'', 'sub_model=sub-a', 'sub_model=sub-b', 'sub_model=sub-b, max_depth=2'}
    from rlm_nb.bench.methods import rlm
    m = scripted_model()
    assert settings_of(rlm, m, m, {'pool': object(), 'timeout': 5}) == {'timeout': 5} # **options: it reads them all
    assert settings_of(echo_sub, m, m, {'timeout': 5, 'max_depth': 2}) == {'max_depth': 2} # **_: only what it names

def test_results_written_before_settings_existed_keep_their_old_key(tmp_path):
    tasks = make_tasks('niah', [600], n=2)
    run(tasks, [ignores_sub, echo_sub], out=tmp_path, model=scripted_model(), sub_model=ScriptedLM(lambda m: 'x', model='sub-a'), progress=False)
    path = tmp_path/'results.jsonl'
    old = [{k: v for k, v in json.loads(l).items() if k != 'settings'} for l in path.read_text().splitlines()]
    path.write_text(''.join(json.dumps(d) + '\n' for d in old)) # as the bench wrote them before
    again = run(tasks, [ignores_sub, echo_sub], out=tmp_path, model=scripted_model(), sub_model=ScriptedLM(lambda m: 'x', model='sub-a'), progress=False)
    assert len(again) == 4 and len(path.read_text().splitlines()) == 4 # the sub-model they recorded is their key
    assert all(a.settings is None for a in again)
    other = run(tasks, [ignores_sub, echo_sub], out=tmp_path, model=scripted_model(), sub_model=ScriptedLM(lambda m: 'x', model='sub-b'), progress=False)
    assert len(path.read_text().splitlines()) == 6 # echo_sub reads the sub-model, and theirs was another: run again
    assert {a.answer for a in other if a.method == 'echo_sub'} == {'sub-b 1'} and all(a.settings is None for a in other if a.method == 'ignores_sub')


def test_cli_bench_run_passes_max_llm_calls_max_depth_and_reuse(tmp_path, capsys):
    from rlm_nb.cli import main
    out = tmp_path/'cli'
    assert main(['bench', 'run', '--suite', 'niah', '--sizes', '600', '--n', '2', '--methods', 'rlm,direct', '--scripted', '--quiet',
                 '--concurrency', '2', '--max-llm-calls', '0', '--max-depth', '2', '--reuse-kernels', '--out', str(out)]) == 0
    res = {a.method: a for a in read_results(out)}
    assert len(read_results(out)) == 4
    assert res['rlm'].settings == {'max_depth': 2, 'max_llm_calls': 0} and res['direct'].settings == {}
    assert all(a.tokens_sub == 0 and a.metadata['sub_calls'] == 0 for a in read_results(out) if a.method == 'rlm') # refused
    capsys.readouterr()
    assert main(['bench', 'run', '--suite', 'niah', '--sizes', '600', '--n', '2', '--methods', 'rlm', '--scripted', '--quiet',
                 '--concurrency', '2', '--out', str(out)]) == 0 # other settings: a new attempt, not the one above
    assert len(read_results(out)) == 6

def test_a_warmed_recycler_serves_a_run_and_stays_open(tmp_path):
    with KernelRecycler() as rec:
        assert rec.warm_up(2).live == 2 and rec.started == 2
        res = run(make_tasks('niah', [600], n=4), ['rlm'], out=tmp_path, concurrency=2, reuse_kernels=rec, progress=False)
        assert len(res) == 4 and all(a.score == 1.0 for a in res)
        assert rec.started == 2 and rec.reused == 4 and not rec.closed and rec.live == 2 # no kernel started in the run
    assert rec.live == 0 and not kernel_processes_alive()

def kernel_processes_alive() -> list:
    deadline = time.monotonic() + 10
    while (left := [p for p in kernel_processes() if p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline: time.sleep(0.1)
    return left
