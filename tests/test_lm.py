"""rlm_nb.lm over real HTTP: litellm talks to a scripted OpenAI-compatible server on 127.0.0.1."""
import socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import pytest
from rlm_nb.lm import LM, ScriptedLM, ModelError, ModelTimeout, check_model, _litellm
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


# ---------------------------------------------------------------- finish_reason, per-reply settings, prices

def test_finish_reason_says_length_when_the_reply_is_cut(server):
    srv = server(['a long reply that the cap cuts short', 'short'])
    cut = LM('openai/test', api_base=srv.url, max_tokens=3).complete('hi')
    assert (cut.finish_reason, cut.text) == ('length', 'a long reply')
    done = LM('openai/test', api_base=srv.url).complete('hi')
    assert (done.finish_reason, done.text) == ('stop', 'short')


def test_per_reply_cap_and_temperature_reach_the_server(server):
    srv = server(['ok'])
    LM('openai/test', api_base=srv.url, max_tokens=64, temperature=0.2).complete('hi')
    body = srv.requests[0]['body']
    assert (body['max_tokens'], body['temperature']) == (64, 0.2)


def test_a_declared_price_gives_a_known_cost(server):
    srv = server(['a priced answer'] * 2)
    u = LM('openai/local-priced', api_base=srv.url, price=(1.0, 2.0)).complete('hi').usage
    assert u.unpriced_calls == 0 and u.free_calls == 0
    assert u.cost == pytest.approx(u.prompt_tokens * 1e-6 + u.completion_tokens * 2e-6)
    free = LM('openai/local-free', api_base=srv.url, price='free').complete('hi').usage
    assert (free.cost, free.free_calls, free.cost_str()) == (0.0, 1, 'free')
    assert (u + free).cost_str().endswith('(+ free calls)')
    with pytest.raises(ModelError, match='price must be'):
        LM('openai/x', price=(1.0,))


def test_scripted_calls_are_free_not_zero_dollars():
    u = ScriptedLM(['a', 'b']).complete('q').usage
    assert (u.cost, u.free_calls, u.cost_str()) == (0.0, 1, 'free')


# ---------------------------------------------------------------- timeouts and deadlines

def test_request_timeout_is_the_per_call_timeout(server):
    srv = server(['too late'], delay=10)
    with pytest.raises(ModelError, match='no answer within'):
        LM('openai/test', api_base=srv.url, request_timeout=0.5, max_retries=0).complete('hi')


def test_deadline_bounds_the_http_wait(server):
    srv = server(['never in time'], delay=30)
    lm = LM('openai/test', api_base=srv.url, max_retries=4) # its own timeout is 600 s
    t = time.monotonic()
    with pytest.raises(ModelTimeout, match='deadline'):
        lm.complete('hi', deadline=time.monotonic() + 1)
    assert time.monotonic() - t < 6 # the deadline, not 600 s times 5 attempts
    assert len(srv.requests) == 1


def test_deadline_bounds_the_retries(server):
    srv = server(['never reached'], faults=[Fault(503)] * 5)
    t = time.monotonic()
    with pytest.raises(ModelTimeout) as e:
        LM('openai/test', api_base=srv.url, max_retries=4, backoff=30).complete('hi', deadline=time.monotonic() + 2)
    assert time.monotonic() - t < 6 and len(srv.requests) == 1 # no 30 s backoff past the deadline
    assert 'injected fault' in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(ModelTimeout, match='no time left'):
        LM('openai/test', api_base=srv.url).complete('hi', deadline=time.monotonic() - 1)


def test_scripted_delay_respects_the_deadline():
    t = time.monotonic()
    with pytest.raises(ModelTimeout):
        ScriptedLM(['slow'], delay=30).complete('q', deadline=time.monotonic() + 0.2)
    assert time.monotonic() - t < 5


# ---------------------------------------------------------------- unreachable servers, one-line errors

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def test_refused_connection_fails_at_once_naming_the_url():
    LM('openai/warm', api_base='http://127.0.0.1:9/v1', max_retries=0) # litellm's import is not what we time
    _litellm()
    url = f'http://127.0.0.1:{free_port()}/v1'
    t = time.monotonic()
    with pytest.raises(ModelError) as e:
        LM('openai/x', api_base=url, max_retries=4, backoff=1).complete('hi')
    assert time.monotonic() - t <= 2
    assert str(e.value) == f'openai/x: cannot reach {url}: connection refused'


@pytest.mark.parametrize('status', [500, 429, 401])
def test_error_messages_name_each_class_once(server, status):
    srv = server([], faults=[Fault(status, message='went wrong')])
    with pytest.raises(ModelError) as e:
        LM('openai/test', api_base=srv.url, max_retries=0).complete('hi')
    msg = str(e.value)
    name = msg.split(': ')[1]
    assert msg.count(name) == 1 and 'went wrong' in msg, msg


def test_check_model_advice_fits_the_caller(monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    with pytest.raises(ModelError) as py: check_model('openai/gpt-4o-mini')
    with pytest.raises(ModelError) as cli: check_model('openai/gpt-4o-mini', where='cli')
    assert 'api_key=' in str(py.value)
    assert 'api_key=' not in str(cli.value) and 'export OPENAI_API_KEY' in str(cli.value) and '--api-base' in str(cli.value)
    with pytest.raises(ModelError) as py: check_model('scripted')
    assert 'api_base=' in str(py.value) and '--api-base' not in str(py.value)
