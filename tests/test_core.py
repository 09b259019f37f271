"""End-to-end tests of the RLM loop: real kernels, and a real HTTP path to a scripted OpenAI-compatible server."""
import json, re, random
import pytest
from rlm_nb.core import RLM, parse_reply
from rlm_nb.events import read_trace, Usage
from rlm_nb.lm import LM, Completion
from rlm_nb.testing import ScriptedServer, Fault
from helpers import (repl, script, rlm, is_root, is_fallback, turn, last_user, first_user, root_requests,
                     sub_requests, request_chars, header)


def feedback_seen_by_root(srv, n: int) -> str:
    "The last user message of root request `n` (1-based), i.e. what the model was told after turn n-1."
    return last_user(root_requests(srv)[n - 1])


# ---------------------------------------------------------------------------------------------------------------
# 1. Needle in a multi-MB context

def test_needle_in_multi_megabyte_context_is_found_without_the_root_seeing_it(server):
    rng = random.Random(7)
    lines = [f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} INFO worker-{i % 17} "
             f"processed job {i} checksum {rng.getrandbits(40):010x} in {i % 97} ms" for i in range(48_000)]
    needle = "2024-03-14T09:26:53 ERROR vault: the launch code is PLUM-7731"
    lines[31_337] = needle
    context = '\n'.join(lines)
    assert 3_000_000 < len(context) < 5_000_000
    witness = lines[40_001]  # a line nobody prints: must never reach the root

    root = [
        repl("""
            print(len(context))
            lines = context.split('\\n')
            print(len(lines), 'lines; first:', lines[0][:60])
        """),
        repl("""
            chunks = ['\\n'.join(lines[i:i + 4000]) for i in range(0, len(lines), 4000)]
            hits = [i for i, c in enumerate(chunks) if 'ERROR' in c]
            print(len(chunks), 'chunks; hits:', hits)
            answer = llm_query('What is the launch code in these log lines?\\n' + chunks[hits[0]])
            print(answer)
        """),
        repl("FINAL(answer)"),
    ]
    def sub(prompt):
        return 'The launch code is PLUM-7731' if needle in prompt else 'No launch code here.'
    srv = server(script(root, sub))
    res = rlm(srv)("What is the launch code?", context=context)

    assert res.stop_reason == 'final'
    assert res.answer == 'The launch code is PLUM-7731'
    assert res.iterations == 3
    roots = root_requests(srv)
    assert len(roots) == 3
    for body in roots:
        assert request_chars(body) < 20_000
        dumped = json.dumps(body)
        assert needle not in dumped and witness not in dumped
    first = first_user(roots[0])
    assert f"{len(context):,} chars" in first and f"{len(lines):,} lines" in first
    assert lines[0] in first and lines[1] in first  # the preview
    calls = res.session.subcalls
    assert len(calls) == 1 and calls[0].kind == 'llm'
    assert needle in calls[0].prompt and len(calls[0].prompt) < len(context) / 5
    assert calls[0].response == 'The launch code is PLUM-7731'
    subs = sub_requests(srv)
    assert len(subs) == 1 and last_user(subs[0]) == calls[0].prompt


# ---------------------------------------------------------------------------------------------------------------
# 2. Batched sub-calls run concurrently

def test_batched_subcalls_run_concurrently_and_return_in_order(server):
    root = [
        repl("""
            prompts = [f'item {i}: double it' for i in range(16)]
            answers = llm_query_batched(prompts)
            print(answers)
        """),
        repl('FINAL_VAR("answers")'),
    ]
    def sub(prompt): return str(2 * int(re.search(r'item (\d+)', prompt)[1]))
    srv = server(script(root, sub), delay=0.3)
    res = rlm(srv, concurrency=8)("Double every item.", context='unused')

    assert res.stop_reason == 'final'
    assert json.loads(res.answer) == [str(2 * i) for i in range(16)]
    assert srv.max_in_flight >= 4
    assert res.sub_calls == 16
    calls = res.session.subcalls
    assert {c.batch for c in calls} == {calls[0].batch} and calls[0].batch is not None
    assert all(c.response == str(2 * int(re.search(r'item (\d+)', c.prompt)[1])) for c in calls)
    assert len(sub_requests(srv)) == 16


# ---------------------------------------------------------------------------------------------------------------
# 3. Every accepted FINAL form

FINAL_FORMS = {
    'FINAL_in_code': ([repl("x = 6 * 7\nprint(x)"), repl("FINAL(x)")], '42', 'FINAL', 2),
    'FINAL_VAR_in_code': ([repl("result = {'total': 42}\nprint(result)"), repl('FINAL_VAR("result")')],
                          '{"total": 42}', 'FINAL_VAR', 2),
    'text_FINAL_after_code': ([repl("print(6 * 7)"), "The output shows 42.\nFINAL(42)"], '42', 'text', 2),
    'text_FINAL_VAR': ([repl("best = 'forty-two'\nprint(best)"), "That is it.\nFINAL_VAR(best)"],
                       'forty-two', 'FINAL_VAR', 2),
    'FINAL_in_code_on_first_turn': ([repl("n = len(context)\nFINAL(n)") + "\n" + repl("print('must not run')")],
                                    '11', 'FINAL', 1),
}

@pytest.mark.parametrize('form', list(FINAL_FORMS))
def test_every_final_form_is_accepted(server, form):
    root, answer, source, iterations = FINAL_FORMS[form]
    srv = server(script(root))
    res = rlm(srv)("What is the answer?", context='hello world')
    assert res.stop_reason == 'final'
    assert res.answer == answer
    assert res.session.final.source == source
    assert res.iterations == iterations
    assert len(root_requests(srv)) == iterations
    if form == 'FINAL_VAR_in_code':
        assert (res.session.final.var, res.session.final.type) == ('result', 'dict')
    if form == 'FINAL_in_code_on_first_turn':
        assert res.code_executions == 1  # the block after FINAL did not run


def test_text_final_ends_at_the_end_of_its_line():
    "A FINAL line followed by more prose: the answer is what is inside the parentheses on that line."
    r = parse_reply("The count above confirms it.\nFINAL(42)\n\n(Counted with code, see above.)")
    assert r.final == ('FINAL', '42')


# ---------------------------------------------------------------------------------------------------------------
# 4. FINAL misuses are refused, with a clear message

def test_text_final_before_any_code_is_refused(server):
    srv = server(script(["I already know the answer.\nFINAL(42)", repl("print(6 * 7)"), "Confirmed.\nFINAL(42)"]))
    res = rlm(srv)("What is the answer?", context='abc')
    first = res.session.iterations[0]
    assert first.final is None and not first.cells
    assert 'no code has run yet' in first.feedback
    assert 'no code has run yet' in feedback_seen_by_root(srv, 2)
    assert res.stop_reason == 'final' and res.answer == '42'
    assert res.session.final.source == 'text' and res.iterations == 3


def test_final_inside_a_non_runnable_fence_is_refused(server):
    srv = server(script(["Done:\n```json\nFINAL(42)\n```", "Done:\n```text\nFINAL(42)\n```", repl("FINAL(6 * 7)")]))
    res = rlm(srv)("What is the answer?", context='abc')
    for i in (0, 1):
        it = res.session.iterations[i]
        assert it.final is None and not it.cells
        assert 'code fence' in it.feedback and '```repl' in it.feedback
        assert 'code fence' in feedback_seen_by_root(srv, i + 2)
    assert res.stop_reason == 'final' and res.answer == '42' and res.session.final.source == 'FINAL'
    assert res.iterations == 3


def test_final_mentioned_in_prose_is_not_an_answer(server):
    srv = server(script([repl("print(len(context))"), "I will call FINAL(answer) once I know.",
                         "Three characters.\nFINAL(3)"]))
    res = rlm(srv)("How long is it?", context='abc')
    second = res.session.iterations[1]
    assert second.final is None
    assert 'mentioned FINAL but did not finish' in second.feedback
    assert 'mentioned FINAL but did not finish' in feedback_seen_by_root(srv, 3)
    assert res.stop_reason == 'final' and res.answer == '3' and res.iterations == 3


def test_final_var_of_a_missing_variable_reports_the_name_error(server):
    srv = server(script([repl('FINAL_VAR("missing_answer")'), "FINAL_VAR(also_missing)",
                         repl('found = 7\nFINAL_VAR("found")')]))
    res = rlm(srv)("What is it?", context='abc')
    it1, it2 = res.session.iterations[:2]
    assert it1.final is None and it1.cells[0].status == 'error'
    assert 'NameError' in it1.feedback and 'missing_answer' in it1.feedback
    assert 'NameError' in feedback_seen_by_root(srv, 2)
    assert it2.final is None
    assert 'FINAL_VAR(also_missing) failed' in it2.feedback and 'NameError' in it2.feedback
    assert 'also_missing' in feedback_seen_by_root(srv, 3) and 'NameError' in feedback_seen_by_root(srv, 3)
    assert res.stop_reason == 'final' and res.answer == '7' and res.session.final.source == 'FINAL_VAR'


def test_text_final_in_the_same_reply_as_code_is_refused(server):
    srv = server(script([repl("print(6 * 7)") + "\nFINAL(41)", "The output says 42.\nFINAL(42)"]))
    res = rlm(srv)("What is the answer?", context='abc')
    first = res.session.iterations[0]
    assert first.final is None and len(first.cells) == 1 and first.cells[0].text.strip() == '42'
    assert 'not accepted' in first.feedback and 'had not' in first.feedback and 'seen' in first.feedback
    assert 'not accepted' in feedback_seen_by_root(srv, 2)
    assert res.stop_reason == 'final' and res.answer == '42' and res.iterations == 2


# ---------------------------------------------------------------------------------------------------------------
# 5-7. Errors, timeouts and a dead kernel are fed back and the session recovers

def test_code_error_traceback_is_fed_back_and_session_recovers(server):
    srv = server(script([repl("def ratio(a, b):\n    return a / b\nratio(1, 0)"), repl("FINAL(ratio(4, 2))")]))
    res = rlm(srv)("Ratio?", context='abc')
    assert res.session.cells[0].status == 'error'
    seen = feedback_seen_by_root(srv, 2)
    assert 'ZeroDivisionError' in seen and 'division by zero' in seen
    assert 'return a / b' in seen and 'ratio(1, 0)' in seen  # the traceback, not just the message
    assert '\x1b[' not in seen  # no ANSI colours
    assert res.stop_reason == 'final' and res.answer == '2.0'


def test_cell_timeout_interrupts_and_the_kernel_keeps_its_state(server):
    srv = server(script([repl("keep = 'still here'\nprint(keep)"), repl("import time\ntime.sleep(30)"),
                         repl("print(keep)\nFINAL(keep + ' ' + str(len(context)))")]))
    res = rlm(srv, cell_timeout=1)("Wait?", context='abcdef')
    slow = res.session.iterations[1]
    assert slow.cells[0].status == 'timeout'
    assert 'timed out' in slow.feedback and 'timed out' in feedback_seen_by_root(srv, 3)
    assert res.session.iterations[2].cells[0].status == 'ok'
    assert res.stop_reason == 'final' and res.answer == 'still here 6'


def test_killed_kernel_is_restarted_with_inputs_reloaded(server):
    srv = server(script([repl("mine = 5\nprint(mine)"), repl("import os\nos.kill(os.getpid(), 9)"),
                         repl("print('mine' in globals())\nFINAL(context.upper())")]))
    res = rlm(srv)("Shout it", context='abcdef')
    died = res.session.iterations[1]
    assert died.cells[0].status == 'died'
    seen = feedback_seen_by_root(srv, 3)
    assert 'restarted' in seen and 'gone' in seen
    after = res.session.iterations[2].cells[0]
    assert after.status == 'ok' and after.text.strip() == 'False'
    assert res.stop_reason == 'final' and res.answer == 'ABCDEF'


# ---------------------------------------------------------------------------------------------------------------
# 8. Budgets stop the session normally, with a best-effort answer

def test_max_iterations_asks_for_a_fallback_answer(server):
    def root(body):
        if is_fallback(body): return "From what I saw:\nFINAL(about 3 lines)"
        return repl(f"print('still looking {turn(body)}')")
    srv = server(script(root))
    res = rlm(srv, max_iterations=2)("How many lines?", context='a\nb\nc')
    assert res.stop_reason == 'max_iterations'
    assert res.answer == 'about 3 lines' and res.session.final.source == 'fallback'
    assert res.iterations == 2
    assert [it.kind for it in res.session.iterations] == ['turn', 'turn', 'fallback']
    roots = root_requests(srv)
    assert len(roots) == 3 and is_fallback(roots[2]) and 'max_iterations' in last_user(roots[2])


def _llm_calls_root(code_turns):
    def root(body):
        if is_fallback(body): return "Best effort:\nFINAL(partial)"
        n = turn(body)
        return code_turns[n - 1] if n <= len(code_turns) else "FINAL(too late)"
    return root


def test_max_llm_calls_stops_across_cells(server):
    one_call = repl("import uuid\nprint(llm_query('question ' + uuid.uuid4().hex))")
    srv = server(script(_llm_calls_root([one_call] * 5)))
    res = rlm(srv, max_llm_calls=2, max_repeats=None)("Ask away", context='abc')  # the same reply each turn, on purpose
    assert res.stop_reason == 'max_llm_calls'
    assert res.sub_calls == 2 and len(sub_requests(srv)) == 2
    assert res.iterations == 3  # a used-up budget ends the session at the first refused call, not before
    assert 'sub-calls of this session are used' in res.session.iterations[1].feedback
    assert 'budget ran out (max_llm_calls)' in res.session.iterations[2].feedback
    assert res.answer == 'partial' and res.session.final.source == 'fallback'


def test_a_batch_too_big_for_the_budget_is_refused_without_ending_the_session(server):
    code = repl("""
        try: llm_query_batched(['p'] * 50)
        except Exception as e: print('refused:', e)
        print(llm_query('just one'))
    """)
    srv = server(script([code, "FINAL(done)"]))
    res = rlm(srv, max_llm_calls=20)("Ask away", context='abc')
    assert res.stop_reason == 'final' and res.answer == 'done'
    assert 'refused: budget exhausted (max_llm_calls)' in res.session.cells[0].text
    assert res.sub_calls == 1


def test_max_llm_calls_stops_a_runaway_loop_inside_one_cell(server):
    loop = repl("""
        got = []
        for i in range(6):
            got.append(llm_query(f'question {i}'))
            print('answered', i)
    """)
    srv = server(script(_llm_calls_root([loop, repl("print(got)")])))
    res = rlm(srv, max_llm_calls=3)("Ask away", context='abc')
    cell = res.session.cells[0]
    assert res.sub_calls == 3 and len(sub_requests(srv)) == 3, f"{res.sub_calls} sub-calls made with max_llm_calls=3"
    assert cell.status == 'error' and 'BridgeError' in cell.text and 'max_llm_calls' in cell.text
    assert 'answered 2' in cell.text and 'answered 3' not in cell.text
    assert res.stop_reason == 'max_llm_calls'
    assert res.answer == 'partial' and res.session.final.source == 'fallback'


def test_max_total_tokens_stops_before_the_next_root_call(server):
    srv = server(script(lambda body: repl(f"print('progress {turn(body)}')")))
    limit = 1500
    res = rlm(srv, max_total_tokens=limit)("Go", context='abc')
    assert res.stop_reason == 'max_total_tokens'
    assert res.usage.total_tokens >= limit
    before_last = sum((it.usage.total_tokens for it in res.session.iterations[:-1]), 0)
    assert before_last < limit  # it did not run past the budget
    assert len(root_requests(srv)) == res.iterations  # no fallback call once tokens are spent
    assert res.answer is None and res.session.final is None  # a cell's output is not an answer


class PricedLM(LM):
    "A real litellm model over HTTP whose every call costs exactly one cent."
    def complete(self, prompt):
        c = super().complete(prompt)
        return Completion(c.text, c.model, Usage.of_call(c.usage.prompt_tokens, c.usage.completion_tokens, 0.01), c.latency)


def test_max_cost_stops_with_known_cost(server):
    srv = server(script(lambda body: repl(f"print(llm_query('turn {turn(body)}'))"), sub=lambda p: f'answer for {p}'))
    r = RLM(PricedLM('openai/root', api_base=srv.url), PricedLM('openai/sub', api_base=srv.url), verbose=False,
            max_cost=0.035)
    res = r("Spend", context='abc')
    assert res.stop_reason == 'max_cost'
    assert res.cost == pytest.approx(0.04)  # turn 1: root + sub; turn 2: root + sub; then stop
    assert res.iterations == 2 and len(root_requests(srv)) == 2 and len(sub_requests(srv)) == 2
    assert res.answer is None and res.session.final is None  # no call is left for an answer; an output is not one


def test_max_cost_stops_runaway_priced_subcalls_inside_one_cell(server):
    loop = repl("""
        for i in range(8):
            print(llm_query(f'question {i}'))
    """)
    srv = server(script([loop, "FINAL(too late)"], sub=lambda p: 'ok'))
    r = RLM(PricedLM('openai/root', api_base=srv.url), PricedLM('openai/sub', api_base=srv.url), verbose=False,
            max_cost=0.035)
    res = r("Spend", context='abc')
    # root 0.01 + sub-calls of 0.01 each: the 3rd sub-call brings the total to 0.04 and the 4th must be refused
    assert len(sub_requests(srv)) == 3, f"{len(sub_requests(srv))} priced sub-calls made with max_cost=0.035"
    assert res.stop_reason == 'max_cost'
    assert res.cost == pytest.approx(0.04)


def test_wall_clock_timeout_stops_slow_cells(server):
    def root(body):
        if turn(body) == 1: return repl("partial = 7\nprint('partial answer:', partial)")
        return repl("import time\ntime.sleep(30)")
    srv = server(script(root))
    res = rlm(srv, timeout=8)("Slow", context='abc')
    assert res.stop_reason == 'timeout'
    assert res.session.cells[-1].status == 'timeout'
    assert res.answer is None and res.session.final is None  # the last output is not passed off as an answer
    assert not any(is_fallback(b) for b in root_requests(srv))


def test_max_errors_stops_after_consecutive_failures(server):
    def root(body):
        if is_fallback(body): return "I could not parse it.\nFINAL(unknown)"
        return repl(f"raise ValueError('bad parse {turn(body)}')")
    srv = server(script(root))
    res = rlm(srv, max_errors=2)("Parse", context='abc')
    assert res.stop_reason == 'max_errors'
    assert res.iterations == 2 and all(c.status == 'error' for c in res.session.cells)
    assert res.answer == 'unknown' and res.session.final.source == 'fallback'
    assert 'bad parse 2' in last_user(root_requests(srv)[-1])


# ---------------------------------------------------------------------------------------------------------------
# 9. Secrets

KEY = 'sk-live-abcdefghijklmnop123456'

def test_api_key_is_invisible_to_kernel_code_and_kept_out_of_the_trace(server, monkeypatch, tmp_path):
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    def sub(prompt):
        # models do echo keys back (e.g. "Incorrect API key provided: sk-..."), so the key reaches the events
        if prompt == 'bad': return Fault(401, message=f'Incorrect API key provided: {KEY}')
        return f'hello, you sent {KEY}'
    srv = server(script([
        repl("""
            import os
            print('key in kernel:', os.environ.get('OPENAI_API_KEY'))
            print('leaks:', [k for k, v in os.environ.items() if 'abcdefghijklmnop' in v])
            print(llm_query('hello'))
            try: llm_query('bad')
            except Exception as e: print('error:', e)
        """),
        "Seen.\nFINAL(done)",
    ], sub))
    trace = tmp_path/'run.jsonl'
    res = rlm(srv, trace=trace)("Check", context='abc')
    assert res.stop_reason == 'final' and res.answer == 'done'
    text = res.session.cells[0].text
    assert 'key in kernel: None' in text and 'leaks: []' in text
    assert srv.requests and all(header(r, 'Authorization') == f'Bearer {KEY}' for r in srv.requests)
    assert len(sub_requests(srv)) == 2
    assert KEY in res.session.subcalls[0].response  # the echo really went through the events...
    assert trace.exists() and 'hello, you sent' in trace.read_text()
    assert KEY not in trace.read_text()  # ...but not into the trace


# ---------------------------------------------------------------------------------------------------------------
# 10. Inputs

def test_list_context_and_named_inputs_become_kernel_variables(server):
    ctx = [{'id': 1, 'name': 'ann'}, {'id': 2, 'name': 'bob'}]
    srv = server(script([repl("""
        FINAL(f"{type(context).__name__}:{len(context)}:{context[1]['name']}|{type(users).__name__}:{users}|"
              f"{type(notes).__name__}:{notes['a']}")
    """)]))
    res = rlm(srv)("Who?", context=ctx, users=['ann', 'bob'], notes={'a': 1})
    assert res.stop_reason == 'final'
    assert res.answer == "list:2:bob|list:['ann', 'bob']|dict:1"
    first = first_user(root_requests(srv)[0])
    assert '`context`' in first and '`users`' in first and '`notes`' in first
    assert [i['name'] for i in res.session.inputs] == ['context', 'users', 'notes']


def test_dict_context_is_a_dict_in_the_kernel(server):
    srv = server(script([repl("FINAL(f\"{type(context).__name__}:{sorted(context)}:{context['b'][1]}\")")]))
    res = rlm(srv)("Keys?", context={'a': 1, 'b': [2, 3]})
    assert res.answer == "dict:['a', 'b']:3"


def test_path_context_is_read_by_the_kernel(server, tmp_path):
    p = tmp_path/'notes.txt'
    p.write_text('line one\nline two\nthe password is swordfish\n')
    srv = server(script([repl("FINAL(context.splitlines()[2].split()[-1] + ' ' + str(type(context).__name__))")]))
    res = rlm(srv)("Password?", context=p)
    assert res.answer == 'swordfish str'
    first = first_user(root_requests(srv)[0])
    assert 'notes.txt' not in first and 'already loaded' in first  # a file name makes models open() it (9.19)


@pytest.mark.parametrize('name', ['llm_query', 'not-valid', 'FINAL', 'class'])
def test_bad_input_names_fail_before_any_kernel_starts(server, monkeypatch, name):
    import rlm_nb.core
    monkeypatch.setattr(rlm_nb.core.KernelREPL, 'start', lambda self: pytest.fail('a kernel was started'))
    srv = server(script([repl("FINAL(1)")]))
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        rlm(srv)("q", context='abc', **{name: 1})
    assert not srv.requests


def test_missing_path_input_fails_with_its_path(server, monkeypatch, tmp_path):
    import rlm_nb.core
    monkeypatch.setattr(rlm_nb.core.KernelREPL, 'start', lambda self: pytest.fail('a kernel was started'))
    srv = server(script([repl("FINAL(1)")]))
    missing = tmp_path/'nope'/'missing.txt'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        rlm(srv)("q", context=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        rlm(srv)("q", context='abc', extra=missing)
    assert not srv.requests


# ---------------------------------------------------------------------------------------------------------------
# 11-12. Trace and result object, from one shared run

@pytest.fixture(scope='module')
def basic_run(tmp_path_factory):
    trace = tmp_path_factory.mktemp('trace')/'run.jsonl'
    srv = ScriptedServer(script([repl("a = llm_query('what is 2+2?')\nprint(a)"), repl("FINAL(a)")],
                                sub=lambda p: '4')).start()
    try: res = rlm(srv, trace=trace)("What is 2+2?", context='two plus two')
    finally: srv.stop()
    return res, srv, trace


def test_trace_records_every_event_and_rebuilds_the_session(basic_run):
    res, srv, trace = basic_run
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    types = [e['type'] for e in events]
    for t in ('session_started', 'iteration_started', 'model_replied', 'cell_started', 'cell_finished',
              'subcall_finished', 'iteration_finished', 'session_ended'):
        assert t in types, t
    assert types[0] == 'session_started' and types[-1] == 'session_ended'
    assert types.count('iteration_started') == 2 and types.count('cell_finished') == 2
    s = read_trace(trace)
    assert s.answer == res.answer == '4'
    assert s.stop_reason == 'final' and s.final == res.session.final
    assert s.iterations == res.session.iterations
    assert s.subcalls == res.session.subcalls and len(s.subcalls) == 1


def test_result_object_reports_answer_counts_usage_and_markdown(basic_run):
    res, srv, trace = basic_run
    assert res.answer == '4' and res.stop_reason == 'final'
    assert res.iterations == 2 and isinstance(res.iterations, int)
    assert res.code_executions == 2 and res.sub_calls == 1
    assert res.root_usage.total_tokens > 0 and res.root_usage.calls == 2
    assert res.sub_usage.total_tokens > 0 and res.sub_usage.calls == 1
    assert res.usage.total_tokens == res.root_usage.total_tokens + res.sub_usage.total_tokens
    assert res.cost is None  # local models have no known price
    assert res.elapsed > 0
    md = res._repr_markdown_()
    assert '**Answer:** 4' in md and 'final' in md
    assert "answer='4'" in repr(res)


# ---------------------------------------------------------------------------------------------------------------
# 13. A root model error ends the session without raising

def test_root_model_error_ends_the_session_without_raising(server):
    srv = server(lambda body: Fault(400, message='bad request: no such model') if is_root(body) else 'sub')
    res = rlm(srv)("q", context='abc')
    assert res.stop_reason == 'model_error'
    assert res.answer is None and res.iterations == 0
    assert len(root_requests(srv)) == 1  # a 400 is not retried


# ---------------------------------------------------------------------------------------------------------------
# 14. A child RLM via rlm_query

CHILD_Q = 'How many items are there?'

@pytest.fixture(scope='module')
def child_run():
    def fn(body):
        if is_root(body) and CHILD_Q in first_user(body):  # the child's root model
            return repl("FINAL(f\"{type(context).__name__}:{len(context)}:{','.join(context)}:{'parent_only' in globals()}\")")
        if is_root(body):
            return [repl(f"parent_only = 1\nans = rlm_query({CHILD_Q!r}, context=['x', 'y', 'z'])\nprint(ans)"),
                    repl("FINAL(ans)")][min(turn(body), 2) - 1]
        return 'sub'
    srv = ScriptedServer(fn).start()
    try: res = rlm(srv)("Count the child's items", context='parent context')
    finally: srv.stop()
    return res, srv


def test_child_rlm_runs_in_its_own_kernel_and_returns_its_final(child_run):
    res, srv = child_run
    assert res.stop_reason == 'final'
    assert res.answer == 'list:3:x,y,z:False'
    calls = res.session.subcalls
    assert len(calls) == 1 and calls[0].kind == 'rlm'
    assert calls[0].response == 'list:3:x,y,z:False' and calls[0].prompt == CHILD_Q
    assert calls[0].usage.calls >= 1  # the child's model calls are counted
    child_roots = [b for b in root_requests(srv) if CHILD_Q in first_user(b)]
    assert len(child_roots) == 1 and child_roots[0]['model'] == 'sub'


def test_child_rlm_is_told_its_context_is_a_list(child_run):
    res, srv = child_run
    child_first = next(first_user(b) for b in root_requests(srv) if CHILD_Q in first_user(b))
    assert 'list of 3 items' in child_first, child_first


def test_one_gigabyte_text_context_works(server):
    "The brief's size: a 1 GB str goes to the kernel as a file, the root sees only its description."
    context = 'ERROR disk full\n' + 'x' * (10**9 - 32) + '\nEND OF LOG\n'
    srv = server(script([repl("print(len(context), context[:15], context[-11:].strip())"), "FINAL(done)"]))
    res = rlm(srv)('How long is the log and how does it start and end?', context=context)
    assert res.stop_reason == 'final'
    assert res.session.cells[0].text.strip() == f"{len(context)} ERROR disk full END OF LOG"
    assert f"{len(context):,} chars" in first_user(root_requests(srv)[0])
    assert max(len(str(b['messages'])) for b in root_requests(srv)) < 20_000


# ---------------------------------------------------------------------------------------------------------------
# Found in review: each of these failed before its fix

from rlm_nb.lm import ScriptedLM


def scripted(replies, **kw):
    return RLM(ScriptedLM(replies), ScriptedLM(lambda m: 'SUB'), verbose=False, **kw)


def test_an_endless_print_loop_is_interrupted_and_its_output_capped():
    res = scripted(["```repl\nwhile True: print('x' * 1000)\n```", "FINAL(survived)"], cell_timeout=3)('q', context='c')
    cell = res.session.cells[0]
    assert cell.status == 'timeout' and res.answer == 'survived'
    assert len(cell.text) < 3_000_000 and 'characters of output were dropped' in cell.text


def test_the_fallback_accepts_FINAL_in_a_repl_block():
    replies = ["```repl\nx = 41\n```", "```repl\nx += 1\n```", "```repl\nFINAL(x)\n```"]
    res = scripted(replies, max_iterations=2)('q', context='c')
    assert res.stop_reason == 'max_iterations' and res.answer == '42'


def test_text_FINAL_VAR_runs_under_the_cell_timeout():
    replies = ["```repl\nclass Slow:\n    def __str__(self):\n        while True: pass\nv = Slow()\n```", "FINAL_VAR(v)", "FINAL(gave up)"]
    res = scripted(replies, cell_timeout=2)('q', context='c')
    assert res.answer == 'gave up'


@pytest.mark.parametrize('kw', [dict(max_iterations=0), dict(cell_timeout=0), dict(max_cost=-1), dict(timeout=0)])
def test_nonsense_budgets_are_refused_up_front(kw):
    with pytest.raises(ValueError, match=next(iter(kw))): scripted([], **kw)


def test_no_cell_timeout_with_a_session_timeout_is_fine():
    res = scripted(["```repl\nprint(1)\n```", "FINAL(ok)"], cell_timeout=None, timeout=60)('q', context='c')
    assert res.answer == 'ok'


def test_dict_and_tuple_inputs_arrive_unchanged():
    res = scripted(["```repl\nFINAL(repr((context[1], pairs[0])))\n```"])('q', context={1: 'one'}, pairs=[('a', 1)])
    assert res.answer == "('one', ('a', 1))"


def test_a_custom_system_prompt_may_contain_braces():
    res = scripted(["```repl\nFINAL('ok')\n```"], system_prompt='Reply like {"answer": 1}. Inputs: {inputs}')('q', context='c')
    assert res.answer == 'ok' and res.session.system_prompt.startswith('Reply like {"answer": 1}. Inputs: `context`')


def test_a_tool_that_exits_does_not_end_the_host():
    def leave():
        "Calls sys.exit."
        raise SystemExit(2)
    res = scripted(["```repl\ntry: leave()\nexcept Exception as e: print(type(e).__name__)\n```", "FINAL(still here)"],
                   tools=[leave])('q', context='c')
    assert res.answer == 'still here' and 'BridgeError' in res.session.cells[0].text


def test_a_child_that_stops_without_FINAL_raises_in_the_parent():
    # the child shares the parent's ScriptedLM sub-model, which answers 'SUB' to everything: it never finishes
    code = "```repl\ntry: rlm_query('sub-problem', context=['a'])\nexcept Exception as e: print(e)\n```"
    res = RLM(ScriptedLM([code, "FINAL(done)"]), ScriptedLM(lambda m: 'no code here'), verbose=False)('q', context='c')
    assert 'the child RLM stopped without FINAL' in res.session.cells[0].text
    assert res.session.subcalls[0].kind == 'rlm' and res.session.subcalls[0].usage.calls > 0


def test_an_input_may_be_named_query():
    res = scripted(["```repl\nFINAL(query + ' / ' + context)\n```"])('the question', context='c', query='an input')
    assert res.answer == 'an input / c' and res.session.query == 'the question'


@pytest.mark.parametrize('name', ['_resume', '_parent', '_x'])
def test_an_input_name_starting_with_an_underscore_is_refused_before_any_kernel_starts(monkeypatch, name):
    import rlm_nb.core
    monkeypatch.setattr(rlm_nb.core.KernelREPL, 'start', lambda self: pytest.fail('a kernel was started'))
    with pytest.raises(ValueError, match=re.escape(repr(name)) + '.*underscore') as e:
        scripted(["```repl\nFINAL(1)\n```"])('q', context='c', **{name: 'v'})
    assert '\n' not in str(e.value)
