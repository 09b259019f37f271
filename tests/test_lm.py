"""rlm_nb.lm over real HTTP: litellm talks to a scripted OpenAI-compatible server on 127.0.0.1."""
import subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
import pytest
from rlm_nb.lm import LM, ScriptedLM, ModelError, check_model
from rlm_nb.testing import Fault


def test_complete_returns_text_usage_and_latency(server):
    srv = server(['hello there'])
    c = LM('openai/test', api_base=srv.url).complete('Say hello to the test suite')
    assert c.text == 'hello there' and c.model == 'openai/test'
    served = srv.requests[0]
    assert served['body']['messages'] == [{'role': 'user', 'content': 'Say hello to the test suite'}]
    assert served['body']['model'] == 'test'
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (len('Say hello to the test suite') // 4, len('hello there') // 4)
    assert c.usage.calls == 1
    assert c.latency > 0


def test_unknown_price_is_unknown_not_zero(server):
    srv = server(['hi'])
    u = LM('openai/test', api_base=srv.url).complete('hi').usage
    assert u.cost is None and u.unpriced_calls == 1
    assert u.cost_str() == 'unknown'


def test_known_price_is_computed(server):
    srv = server(['a priced answer'])
    u = LM('openai/gpt-4o-mini', api_base=srv.url, api_key='sk-test-123').complete('hi').usage
    assert u.unpriced_calls == 0 and u.cost is not None and u.cost > 0


def test_message_list_passes_through(server):
    srv = server(['ok'])
    msgs = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
    LM('openai/test', api_base=srv.url).complete(msgs)
    assert srv.requests[0]['body']['messages'] == msgs


# ---------------------------------------------------------------- retries and errors

def test_transient_failures_are_retried(server):
    srv = server(['finally'], faults=[Fault(429), Fault(500), Fault(503)])
    c = LM('openai/test', api_base=srv.url, max_retries=4, backoff=0.01).complete('hi')
    assert c.text == 'finally'
    assert len(srv.requests) == 4


def test_retries_run_out_with_a_one_line_model_error(server):
    srv = server(['never reached'], faults=[Fault(429, message='slow down'), Fault(500), Fault(503)])
    with pytest.raises(ModelError) as e:
        LM('openai/test', api_base=srv.url, max_retries=1, backoff=0.01).complete('hi')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('openai/test: ')
    assert 'injected fault' in msg # the last error the server sent
    assert len(srv.requests) == 2


def test_client_error_is_not_retried(server):
    srv = server(['never reached'], faults=[Fault(400, message='invalid request: bad role')])
    with pytest.raises(ModelError) as e:
        LM('openai/test', api_base=srv.url, max_retries=4, backoff=0.01).complete('hi')
    assert 'bad role' in str(e.value) and '\n' not in str(e.value)
    assert len(srv.requests) == 1


def test_timeout_is_retried_then_reported(server):
    srv = server(['too late'], delay=5)
    with pytest.raises(ModelError) as e:
        LM('openai/test', api_base=srv.url, timeout=1, max_retries=1, backoff=0.01).complete('hi')
    assert '\n' not in str(e.value)
    assert len(srv.requests) == 2


def test_explicit_api_key_is_sent_as_bearer_token(server):
    srv = server(['ok'])
    LM('openai/test', api_base=srv.url, api_key='sk-test-123').complete('hi')
    headers = {k.lower(): v for k, v in srv.requests[0]['headers'].items()}
    assert headers['authorization'] == 'Bearer sk-test-123'


# ---------------------------------------------------------------- check_model

def test_check_model_rejects_unknown_provider():
    with pytest.raises(ModelError, match='unknown model'):
        check_model('nosuchprovider/x')


def test_check_model_names_the_missing_key(monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    with pytest.raises(ModelError, match='OPENAI_API_KEY'):
        check_model('openai/gpt-4o-mini')


def test_check_model_treats_an_empty_key_as_missing(monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', '  ')
    with pytest.raises(ModelError, match='OPENAI_API_KEY'):
        check_model('openai/gpt-4o-mini')


def test_check_model_accepts_a_custom_endpoint_without_key(monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    check_model('openai/gpt-4o-mini', api_base='http://127.0.0.1:1/v1')
    check_model('openai/anything', api_base='http://127.0.0.1:1/v1')


# ---------------------------------------------------------------- ScriptedLM

def test_scripted_lm_replies_in_order_then_runs_out():
    lm = ScriptedLM(['one', 'two'])
    assert [lm.complete('a').text, lm.complete('b').text] == ['one', 'two']
    with pytest.raises(ModelError, match='only 2 replies'):
        lm.complete('c')
    assert [m[-1]['content'] for m in lm.calls] == ['a', 'b', 'c']


def test_scripted_lm_function_mode():
    lm = ScriptedLM(lambda msgs: msgs[-1]['content'].upper(), model='shout')
    c = lm.complete('quiet please')
    assert (c.text, c.model) == ('QUIET PLEASE', 'shout')
    assert c.usage.prompt_tokens > 0 and c.usage.calls == 1 and c.usage.cost == 0.0


def test_scripted_lm_hands_out_each_reply_once_under_concurrency():
    replies = [f'r{i}' for i in range(16)]
    lm, barrier = ScriptedLM(replies), threading.Barrier(16)
    def call(i):
        barrier.wait()
        return lm.complete(f'q{i}').text
    with ThreadPoolExecutor(16) as pool: got = list(pool.map(call, range(16)))
    assert sorted(got) == sorted(replies)
    assert len(lm.calls) == 16


# ---------------------------------------------------------------- import cost

def test_importing_rlm_nb_does_not_import_litellm():
    code = ('import sys, rlm_nb, rlm_nb.kernel, rlm_nb.bridge, rlm_nb.lm, rlm_nb.core, rlm_nb.events\n'
            'print("litellm" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'
