"""Helpers for the end-to-end tests: scripting a root and a sub-model behind one ScriptedServer."""
import textwrap
from rlm_nb.core import RLM
from rlm_nb.testing import Fault

ROOT_MARK = 'Recursive Language Model'
LIMIT_MARK = 'has reached its limit'


def repl(code: str) -> str:
    "A ```repl block holding `code`."
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def messages(body: dict) -> list: return body.get('messages', [])


def is_root(body: dict) -> bool:
    "A root-model request carries the RLM system prompt; a sub-call is a single user message."
    return any(m.get('role') == 'system' and ROOT_MARK in str(m.get('content')) for m in messages(body))


def turn(body: dict) -> int:
    "1-based number of the root turn this request asks for (fallback requests count as the next turn)."
    return 1 + sum(m.get('role') == 'assistant' for m in messages(body))


def last_user(body: dict) -> str:
    users = [m for m in messages(body) if m.get('role') == 'user']
    return str(users[-1]['content']) if users else ''


def first_user(body: dict) -> str:
    users = [m for m in messages(body) if m.get('role') == 'user']
    return str(users[0]['content']) if users else ''


def is_fallback(body: dict) -> bool: return is_root(body) and LIMIT_MARK in last_user(body)


def script(root, sub=None):
    """A server script routing on the body.
    `root`: list of replies indexed by turn, or fn(body) -> reply. `sub`: fn(prompt) -> reply (default: an echo).
    An exhausted root list answers 400, which ends the session at once with stop_reason 'model_error'."""
    def fn(body):
        if is_root(body):
            if callable(root): return root(body)
            i = turn(body) - 1
            return root[i] if i < len(root) else Fault(400, message=f'root script exhausted at turn {i + 1}')
        prompt = last_user(body)
        return sub(prompt) if sub else f'sub answer to: {prompt[:40]}'
    return fn


def rlm(srv, **kw) -> RLM:
    "An RLM whose root and sub models are served by `srv` over HTTP."
    return RLM(model='openai/root', sub_model='openai/sub', api_base=srv.url, verbose=False, **kw)


def root_requests(srv) -> list: return [r['body'] for r in srv.requests if is_root(r['body'])]
def sub_requests(srv) -> list: return [r['body'] for r in srv.requests if not is_root(r['body'])]


def request_chars(body: dict) -> int: return sum(len(str(m.get('content', ''))) for m in messages(body))


def header(record: dict, name: str):
    "A request header, looked up case-insensitively."
    return next((v for k, v in record['headers'].items() if k.lower() == name.lower()), None)
