"""The loop against what real models and servers do: odd FINALs, cut-off and repeated replies, full windows, slow
servers, odd budgets. Real kernels; the models are a ScriptedServer behind litellm's real HTTP path."""
import json, os, time
from pathlib import Path
import pytest
from rlm_nb.core import RLM, parse_reply, COMPACT_ASK
from rlm_nb.events import read_trace
from rlm_nb.testing import Fault, ScriptedReply
from helpers import (repl, script, rlm, is_root, is_fallback, turn, last_user, first_user, root_requests, sub_requests,
                     request_chars, messages)


def told(res, i: int) -> str:
    "What the model was told after iteration `i` (1-based)."
    return res.session.iterations[i - 1].feedback


# ---------------------------------------------------------------------------------------------------------------
# 1. A text FINAL is the text the model wrote, unless it is exactly one literal that is not a tuple

@pytest.mark.parametrize('written, answer', [('1,000', '1,000'), ('12,500,000', '12,500,000'),
                                             ('"Paris", "France"', '"Paris", "France"'), ('"Paris"', 'Paris'),
                                             ('42', '42'), ('[1, 2]', '[1, 2]')])
def test_a_text_FINAL_keeps_what_the_model_wrote(server, written, answer):
    srv = server(script([repl("print(len(context))"), f"The count is clear.\nFINAL({written})"]))
    res = rlm(srv)("How many?", context='abc')
    assert res.stop_reason == 'final' and res.answer == answer and res.session.final.source == 'text'


def test_a_text_FINAL_of_a_variable_name_gives_its_value(server):
    srv = server(script([repl("final_answer = 'ORD-1'\nprint(final_answer)"), "FINAL(final_answer)"]))
    res = rlm(srv)("Which order?", context='abc')
    assert res.answer == 'ORD-1' and res.session.final.var == 'final_answer'


# ---------------------------------------------------------------------------------------------------------------
# 2. A budget stop gets its best-effort answer from the model, or None: never a cell's raw output

def test_running_out_of_iterations_asks_the_model_and_keeps_an_answer_held_in_code(server):
    def root(body):
        if is_fallback(body): return "FINAL(final_answer)"
        return [repl("final_answer = 'ORD-1'"), repl("print('checking', final_answer)")][turn(body) - 1]
    srv = server(script(root))
    res = rlm(srv, max_iterations=2)("Which order?", context='abc')
    assert res.stop_reason == 'max_iterations' and res.answer == 'ORD-1' and res.session.final.source == 'fallback'


def test_a_timeout_answers_None_not_the_log(server):
    srv = server(script([repl("print('log line ' * 500)"), repl("import time; time.sleep(30)")]))
    t = time.monotonic()
    res = rlm(srv, timeout=4)("What failed?", context='abc')
    assert res.stop_reason == 'timeout' and res.answer is None and res.session.final is None
    assert not any(is_fallback(b) for b in root_requests(srv))  # no time is left for a call
    assert time.monotonic() - t < 20


def test_an_empty_best_effort_reply_is_no_answer(server):
    srv = server(script(lambda body: "" if is_fallback(body) else repl(f"print({turn(body)})")))
    res = rlm(srv, max_iterations=1)("?", context='abc')
    assert res.stop_reason == 'max_iterations' and res.answer is None


def test_repeated_errors_ask_for_a_best_effort_answer(server):
    srv = server(script(lambda body: "FINAL(gave up)" if is_fallback(body) else repl(f"1/0  # try {turn(body)}")))
    res = rlm(srv, max_errors=2)("?", context='abc')
    assert res.stop_reason == 'max_errors' and res.answer == 'gave up'


# ---------------------------------------------------------------------------------------------------------------
# 3. A reply cut off by the length limit, and an unclosed fence, are named for what they are

def test_a_reply_cut_off_by_the_length_limit_is_told_so(server):
    cut = ScriptedReply("Let me count the lines.\n```repl\nlines = context.split('\\n')\nprint(len(li", 'length')
    n = len(cut.text) // 4  # the tokens the server reports
    srv = server(script([cut, repl("print(len(context.split()))"), "FINAL(1)"]))
    res = rlm(srv)("How many lines?", context='abc')
    first = res.session.iterations[0]
    assert not first.cells
    assert f'cut off at {n} tokens' in first.feedback and 'did not run' in first.feedback
    assert 'no ```repl code block' not in first.feedback
    assert f'cut off at {n} tokens' in last_user(root_requests(srv)[1])
    assert res.stop_reason == 'final'


def test_an_unclosed_fence_in_a_complete_reply_has_its_own_message(server):
    srv = server(script(["Counting.\n```repl\nprint(len(context))", repl("print(len(context))"), "FINAL(3)"]))
    res = rlm(srv)("How long?", context='abc')
    fb = told(res, 1)
    assert 'never closed' in fb and 'no ```repl code block' not in fb and 'cut off' not in fb
    assert res.answer == '3'


# ---------------------------------------------------------------------------------------------------------------
# 4. The session token budget and the per-reply cap have different names

def test_max_tokens_is_refused_as_ambiguous():
    with pytest.raises(TypeError, match='max_total_tokens.*max_reply_tokens'):
        RLM('openai/x', api_base='http://127.0.0.1:9/v1', max_tokens=512)


def test_max_reply_tokens_caps_each_reply_and_does_not_end_the_session(server):
    srv = server(script([repl("x = 1"), repl("print(x)"), "FINAL(1)"]))
    res = rlm(srv, max_reply_tokens=512, temperature=0)("?", context='abc')
    assert res.stop_reason == 'final' and res.iterations == 3
    bodies = [r['body'] for r in srv.requests]
    assert all(b.get('max_tokens') == 512 and b.get('temperature') == 0 for b in bodies)


# ---------------------------------------------------------------------------------------------------------------
# 7. max_llm_calls=0: code that needs no sub-call runs to its FINAL

def test_no_sub_calls_allowed_still_runs_to_FINAL(server):
    srv = server(script([repl("n = len(context)\nprint(n)"), repl("print(n * 2)"), repl("FINAL(n)")]))
    res = rlm(srv, max_llm_calls=0)("How long?", context='abcd')
    assert res.stop_reason == 'final' and res.answer == '4' and res.iterations == 3


def test_no_sub_calls_allowed_ends_at_the_first_refused_call(server):
    srv = server(script(lambda b: "FINAL(unknown)" if is_fallback(b) else repl("print(llm_query('hi'))")))
    res = rlm(srv, max_llm_calls=0)("?", context='abc')
    assert res.stop_reason == 'max_llm_calls' and res.iterations == 1 and not sub_requests(srv)
    assert 'max_llm_calls' in res.session.cells[0].text and res.answer == 'unknown'


# ---------------------------------------------------------------------------------------------------------------
# 8. Empty and comment-only blocks are not code

def test_empty_and_comment_only_blocks_do_not_run_or_count_as_code(server):
    srv = server(script(["Plan:\n```repl\n# first look at the data\n# then count\n```\n```repl\n\n```",
                         "Counted.\nFINAL(3)", repl("print(len(context))"), "FINAL(3)"]))
    res = rlm(srv)("How long?", context='abc')
    first, second = res.session.iterations[:2]
    assert not first.cells and 'empty or held only comments' in first.feedback
    assert second.final is None and 'no code has run yet' in second.feedback  # the comments did not count
    assert res.answer == '3' and res.iterations == 4


def test_empty_blocks_count_as_failed_turns(server):
    srv = server(script(lambda b: "FINAL(none)" if is_fallback(b) else f"```repl\n# thinking about step {turn(b)}\n```"))
    res = rlm(srv, max_errors=3)("?", context='abc')
    assert res.stop_reason == 'max_errors' and res.iterations == 3 and not res.session.cells


# ---------------------------------------------------------------------------------------------------------------
# 9. FINAL in <think> is a thought; **FINAL(x)** and bare fences of Python are what models write

def test_a_FINAL_inside_think_is_not_an_answer(server):
    srv = server(script([repl("print(len(context))"),
                         "<think>It is 3, so FINAL(3)\nFINAL(3)</think>Let me double-check.\n" + repl("print(len(context) == 3)"),
                         "**FINAL(3)**"]))
    res = rlm(srv)("How long?", context='abc')
    second = res.session.iterations[1]
    assert second.final is None and len(second.cells) == 1
    assert res.answer == '3' and res.iterations == 3 and res.session.final.source == 'text'


def test_a_bare_fence_of_python_runs(server):
    srv = server(script(["```\nn = len(context)\nprint(n)\n```", "FINAL(n)"]))
    res = rlm(srv)("How long?", context='abcde')
    assert res.session.cells[0].text.strip() == '5' and res.answer == '5'


# ---------------------------------------------------------------------------------------------------------------
# 11. A repeated reply is noticed, and a model that goes on repeating is stopped

def test_repeated_replies_are_named_and_then_stopped(server):
    same = "Let me look at the data.\n" + repl("print(context[:10])")
    srv = server(script(lambda b: "FINAL(abc)" if is_fallback(b) else same))
    res = rlm(srv, max_iterations=10)("What is it?", context='abc')
    assert res.stop_reason == 'repeated' and res.iterations == 3
    assert 'repeats your reply in iteration 1' in told(res, 2)
    assert 'repeats your reply in iteration 1' in last_user(root_requests(srv)[2])
    assert not res.session.iterations[2].cells  # the third copy did not run
    assert res.answer == 'abc' and res.session.final.source == 'fallback'


def test_a_nearly_identical_reply_counts_as_a_repeat(server):
    plan = ("I have not found it yet. The text is short, so I will print its start, its length and the words it "
            "holds, and then look for anything that could be the answer to the question in what it prints.")
    code = "print(context[:10])\nprint(len(context))\nprint(context.split())"
    replies = [plan + "\n" + repl(code), plan.replace('yet.', 'yet!') + "\n" + repl(code + "  # again")]
    srv = server(script(replies + [repl("print(1)"), "FINAL(x)"]))
    res = rlm(srv)("What is it?", context='abc')
    assert 'repeats your reply in iteration 1' in told(res, 2) and res.answer == 'x'


# ---------------------------------------------------------------------------------------------------------------
# 12. Near the window the conversation is compacted; an overflow ends in a best-effort answer

def _compacting_root(body):
    if COMPACT_ASK[:40] in last_user(body): return "Notes: the context has 3 chars; I printed filler twice."
    if is_fallback(body): return "FINAL(fallback)"
    if 'Your notes on them' in first_user(body): return repl("FINAL(len(context))")  # after a compaction
    return repl(f"print('filler {turn(body)} ' * 800)")


def test_a_conversation_near_the_window_is_compacted_and_the_REPL_keeps_its_variables(server, tmp_path):
    srv = server(script(_compacting_root))
    res = rlm(srv, context_window=4000, trace=tmp_path / 't.jsonl')("How long?", context='abc')
    kinds = [it.kind for it in res.session.iterations]
    assert 'compaction' in kinds and res.stop_reason == 'final' and res.answer == '3'
    compact_requests = [b for b in root_requests(srv) if COMPACT_ASK[:40] in last_user(b)]
    assert compact_requests
    after = root_requests(srv)[-1]
    assert 'Your notes on them' in first_user(after) and 'I printed filler twice' in first_user(after)
    assert request_chars(after) < 16_000
    assert any(it.kind == 'compaction' for it in read_trace(tmp_path / 't.jsonl').iterations)


def test_a_provider_window_error_compacts_once_and_goes_on(server):
    def root(body):
        if request_chars(body) > 9000 and COMPACT_ASK[:40] not in last_user(body):
            return Fault(400, message="This model's maximum context length is 2048 tokens. Please reduce the length of the messages.")
        return _compacting_root(body)
    srv = server(script(root))
    res = rlm(srv)("How long?", context='abc')
    assert 'compaction' in [it.kind for it in res.session.iterations]
    assert res.stop_reason == 'final' and res.answer == '3'


def test_a_window_that_stays_full_ends_with_a_best_effort_answer(server):
    def root(body):
        if COMPACT_ASK[:40] in last_user(body) or (request_chars(body) > 9000 and not is_fallback(body)):
            return Fault(400, message="This model's maximum context length is 2048 tokens.")
        return _compacting_root(body)
    srv = server(script(root))
    res = rlm(srv)("How long?", context='abc')
    assert res.stop_reason == 'context_window' and res.answer == 'fallback'


# ---------------------------------------------------------------------------------------------------------------
# 13. The session timeout bounds model calls too

def test_a_server_that_never_answers_is_bounded_by_the_session_timeout(server):
    srv = server(script(lambda b: Fault(200, delay=60) if turn(b) == 2 else repl("print(1)")))
    t = time.monotonic()
    res = rlm(srv, timeout=5)("?", context='abc')
    assert time.monotonic() - t < 20, "the model call outlived the session timeout"
    assert res.stop_reason == 'timeout' and res.answer is None


def test_request_timeout_bounds_one_call(server):
    srv = server(script(lambda b: Fault(200, delay=60)))
    t = time.monotonic()
    res = rlm(srv, request_timeout=2)("?", context='abc')
    assert time.monotonic() - t < 40 and res.stop_reason == 'model_error'


# ---------------------------------------------------------------------------------------------------------------
# 17. A trace that can't be written is one line before anything starts

def test_an_unwritable_trace_path_fails_before_the_session(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(ValueError, match='trace file .* cannot be written'):
        RLM('openai/x', api_base='http://127.0.0.1:9/v1', trace=blocker / 'trace.jsonl')


# ---------------------------------------------------------------------------------------------------------------
# 15. A session directory left by a killed host (SIGKILL can't be handled) is removed by the next session

def test_session_directories_of_dead_hosts_are_cleaned(server):
    import subprocess, sys, tempfile
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    left = Path(tempfile.mkdtemp(prefix='rlm_nb-session-'))
    (left / '.rlm_nb-owner').write_text(str(dead.pid))
    (left / 'context.txt').write_text('a copy of the inputs')
    alive = Path(tempfile.mkdtemp(prefix='rlm_nb-session-'))
    (alive / '.rlm_nb-owner').write_text(str(os.getpid()))
    try:
        srv = server(script([repl("print(1)"), "FINAL(1)"]))
        rlm(srv)("?", context='abc')
        assert not left.exists() and alive.exists()
    finally:
        import shutil; shutil.rmtree(left, ignore_errors=True); shutil.rmtree(alive, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# 6 and 18, as the loop sees them: an input may not hide a tool; a declared price makes max_cost work locally

def test_an_input_named_like_a_tool_is_refused_before_any_kernel_starts(server):
    def lookup(key: str) -> str: return key
    srv = server(script([repl("print(1)")]))
    with pytest.raises(ValueError, match="input name 'lookup' would hide the tool"):
        rlm(srv, tools=[lookup])("?", context='abc', lookup='x')
    assert not srv.requests


def test_a_declared_price_makes_max_cost_work_for_a_local_model(server):
    srv = server(script(lambda b: repl(f"print({turn(b)})")))
    res = rlm(srv, price=(100.0, 100.0), max_cost=0.5)("?", context='abc')  # $0.0001 a token: a few turns
    assert res.stop_reason == 'max_cost' and res.cost is not None and res.cost >= 0.5
    assert 2 <= res.iterations < 20


def test_free_models_cost_free_not_unknown(server):
    srv = server(script([repl("print(1)"), "FINAL(1)"]))
    res = rlm(srv, price='free')("?", context='abc')
    assert res.cost == 0 and res.usage.cost_str() == 'free'


# ---------------------------------------------------------------------------------------------------------------
# 2 and 9, with evidence: the last answers Qwen2.5-Coder-1.5B really gave when asked to answer now

@pytest.mark.parametrize('last_word, answer', [
    ("```repl\nFinal(3)\n```", '3'),                                        # FINAL in the wrong case, in code
    ("```repl\nlen(context)\n```", '4'),                                    # an expression: its value is the answer
    ("```repl\n# the size\nn = len(context)\nn * 2\n```", '8'),             # a block ending in an expression, as a notebook shows it
    ("```repl\nThe largest value in the context is 98.\n```", 'The largest value in the context is 98.'),  # prose in a fence
    ("final(7)", '7'),                                                      # a text FINAL in the wrong case
])
def test_a_best_effort_answer_is_taken_in_the_forms_real_models_give_it(server, last_word, answer):
    srv = server(script(lambda b: last_word if is_fallback(b) else repl(f"x = {turn(b)}")))
    res = rlm(srv, max_iterations=1)("?", context='abcd')
    assert res.stop_reason == 'max_iterations' and res.answer == answer and res.session.final.source == 'fallback'


def test_a_lowercase_final_in_code_finishes_but_a_variable_named_final_is_kept(server):
    srv = server(script([repl("print(len(context))\nfinal('three')")]))
    assert rlm(srv)("?", context='abc').answer == 'three'
    srv = server(script([repl("final = [1]\nfinal.append(2)"), repl("print(final)\nFINAL('done')")]))
    res = rlm(srv)("?", context='abc')
    assert res.session.cells[1].text.strip() == '[1, 2]' and res.answer == 'done' and res.stop_reason == 'final'


def test_compaction_notes_that_would_not_shrink_the_conversation_are_cut(server):
    "Seen with the 1.5B model: asked for notes, it wrote them longer than the turns they replace."
    def root(body):
        if COMPACT_ASK[:40] in last_user(body): return "Notes: " + "the inputs are long. " * 2000
        return _compacting_root(body)
    srv = server(script(root))
    res = rlm(srv, context_window=4000)("How long?", context='abc')
    notes = next(it for it in res.session.iterations if it.kind == 'compaction').reasoning
    assert len(notes) < 6000 and 'characters omitted' in notes
    assert res.answer == '3' and request_chars(root_requests(srv)[-1]) < 16_000
