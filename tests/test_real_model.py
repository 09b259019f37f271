"""Opt-in: real sessions against a real model behind an OpenAI-compatible server.

Skipped unless RLM_NB_REAL_MODEL names the model (a litellm name), e.g. with the local model of
../shared/tools/local-model (setup.sh once, then serve.sh):

    RLM_NB_REAL_MODEL=openai/qwen2.5-coder-1.5b-instruct RLM_NB_REAL_API_BASE=http://127.0.0.1:8731/v1 \\
        python -m pytest -m real_model tests/test_real_model.py -v

These tests assert the loop's behaviour, not the model's accuracy: a clean stop reason, no false message to the
model, a non-empty best-effort answer, no kernel left behind (conftest checks that). A small model is slow (10-70 s a
turn on two cores) and weak; that is the point: it repeats itself, gets cut off and writes odd code."""
import os, random
import pytest
from rlm_nb.core import RLM, parse_reply, is_empty_code

MODEL, API_BASE = os.environ.get('RLM_NB_REAL_MODEL'), os.environ.get('RLM_NB_REAL_API_BASE')
pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1800),
              pytest.mark.skipif(not MODEL, reason='set RLM_NB_REAL_MODEL (and RLM_NB_REAL_API_BASE) to run real-model tests')]
CLEAN = {'final', 'max_iterations', 'max_errors', 'repeated', 'context_window', 'max_llm_calls'}


def real_rlm(**kw) -> RLM:
    os.environ.setdefault('OPENAI_API_KEY', 'sk-local-no-key')  # a local server needs none, the client wants one
    kw = {'max_iterations': 6, 'timeout': 900, 'cell_timeout': 60, 'temperature': 0, 'verbose': True, **kw}
    return RLM(MODEL, api_base=API_BASE, **kw)


def assert_clean(res):
    "The loop behaved: a clean stop, an answer, and no message to the model that contradicts its reply."
    s = res.session
    summary = '\n'.join(f"  {it.kind} {it.index}: {' '.join(it.response.split())[:160]!r} -> "
                        f"{' '.join(it.feedback.split())[-160:]!r}" for it in s.iterations)
    print(f"\nstop_reason={res.stop_reason} answer={res.answer!r} iterations={res.iterations} "
          f"sub_calls={res.sub_calls} tokens={res.usage.total_tokens}\n{summary}")
    assert res.stop_reason in CLEAN, f"stopped with {res.stop_reason}"
    assert isinstance(res.answer, str) and res.answer.strip(), 'no best-effort answer'
    for it in s.iterations:
        if it.kind != 'turn': continue
        reply = parse_reply(it.response)
        if any(not is_empty_code(c) for c in reply.code) or reply.unclosed:
            assert 'had no ```repl code block' not in it.feedback, f"iteration {it.index}: told it had no code block"


def test_a_needle_in_a_log():
    rng = random.Random(3)
    lines = [f"2024-05-{1 + i % 28:02d} INFO worker-{rng.randint(1, 9)} handled request {i}" for i in range(3000)]
    lines[2211] = "2024-05-19 ERROR payments: card declined for order ORD-5521"
    res = real_rlm()("Which order had a declined card? Answer with the order id.", context='\n'.join(lines))
    assert_clean(res)


def test_a_batched_task():
    reviews = ["Great product, works perfectly", "Terrible, broke after a day", "Love it", "Awful support",
               "Five stars", "Would not buy again", "Excellent value", "Worst purchase ever"]
    res = real_rlm(max_llm_calls=20)(
        "How many of these reviews are positive? Classify each with llm_query_batched, then count.", context=reviews)
    assert_clean(res)


def test_a_tiny_reply_cap_cuts_replies_and_is_reported():
    res = real_rlm(max_reply_tokens=12, max_iterations=4)("How many lines does the text have?",
                                                           context='\n'.join(f"line {i}" for i in range(500)))
    assert_clean(res)
    assert any('cut off at' in it.feedback for it in res.session.iterations), 'no reply was reported cut off'


def test_a_small_window_compacts_or_ends_with_an_answer():
    text = '\n'.join(f"record {i}: value {i * 7 % 101}" for i in range(20_000))
    res = real_rlm(context_window=1200, max_iterations=8)(  # a window the system prompt and two turns fill
        "What is the largest value? Print plenty of records while you look.", context=text)
    assert_clean(res)
    kinds = [it.kind for it in res.session.iterations]
    assert 'compaction' in kinds or res.stop_reason in ('context_window', 'final', 'max_iterations', 'repeated')


def test_a_small_bench_of_niah_and_oolong(tmp_path):
    "The research bench on the real model: the machinery end to end, and the table for the notes (not a score)."
    from rlm_nb import bench
    os.environ.setdefault('OPENAI_API_KEY', 'sk-local-no-key')
    tasks = bench.make_tasks('niah', sizes=(2000,), n=1, seed=1) + bench.make_tasks('oolong', sizes=(2000,), n=1, seed=1)
    got = bench.run(tasks, methods=('rlm', 'direct'), model=MODEL, api_base=API_BASE, price='free', out=tmp_path / 'run',
                    concurrency=1, window=32768, max_iterations=4, timeout=600, progress=False)
    assert len(got) == 4 and all(a.error is None for a in got), [a.error for a in got]
    table = bench.markdown_table(bench.report(tmp_path / 'run'))
    print('\n' + table)
    assert 'niah' in table and 'oolong' in table
