"""The README's Python blocks run as written, in order, in one namespace, as a reader pasting them into Python would.

The rule for what is skipped (everything else runs):
- a block with an IPython magic (a line starting with `%`) needs a notebook;
- a block that names a real model, a string literal starting with a litellm provider (`"openai/..."`,
  `"anthropic/..."`, `"ollama/..."`), needs a key or a server.
Comments don't count, so a runnable block may mention a real model in a comment. Blocks of other languages (`sh`,
plain fences) are not Python; `.ci/run` runs the README's `sh` commands."""
import ast, os, re
from pathlib import Path
import pytest

README = Path(__file__).parent.parent / 'README.md'


def python_blocks(text: str) -> list:
    "(line number, code) of every ```python block."
    return [(text.count('\n', 0, m.start(1)) + 1, m[1]) for m in re.finditer(r'^```python\n(.*?)\n```$', text, re.S | re.M)]


def providers() -> set:
    os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')
    import litellm
    return {getattr(p, 'value', p) for p in litellm.provider_list}


def why_skipped(code: str, providers: set) -> str | None:
    "The rule above: why a block can't run here, or None if it runs."
    if any(line.lstrip().startswith('%') for line in code.splitlines()): return 'an IPython magic needs a notebook'
    models = [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
              and n.value.split('/', 1)[0] in providers and '/' in n.value]
    return f'names a real model ({models[0]}), which needs a key or a server' if models else None


def run_block(code: str, line: int, namespace: dict):
    "Run a block like the Python prompt: statements, then a last expression shown with repr()."
    tree = ast.parse('\n' * (line - 1) + code, filename=str(README))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, str(README), 'exec'), namespace)
    if last is not None: repr(eval(compile(ast.Expression(last.value), str(README), 'eval'), namespace))


def test_the_skip_rule():
    known = {'openai', 'anthropic', 'ollama'}
    assert why_skipped('%load_ext rlm_nb\n%config RLMMagics.model = "x"', known) == 'an IPython magic needs a notebook'
    assert 'openai/gpt-4o-mini' in why_skipped('rlm = RLM(model="openai/gpt-4o-mini")', known)
    assert why_skipped('RLM("anthropic/claude-3-5-sonnet-latest", sub_api_base="http://localhost:8000/v1")', known)
    assert why_skipped('fork(res, at=1, model=ScriptedLM(["FINAL(1)"]))  # or model="openai/gpt-4o-mini"', known) is None
    assert why_skipped('open("data/complaints.txt")', known) is None  # a path is not a model


def test_every_python_block_of_the_readme_that_needs_no_key_runs_in_order(tmp_path, monkeypatch):
    blocks, known = python_blocks(README.read_text(encoding='utf-8')), providers()
    skipped = {line: why for line, code in blocks if (why := why_skipped(code, known))}
    runnable = [(line, code) for line, code in blocks if line not in skipped]
    assert len(runnable) >= 2 and all(line in dict(runnable) for line, code in blocks if 'ScriptedLM' in code), \
        f'the README lost its runnable examples: {len(blocks)} python blocks, skipped {skipped}'
    monkeypatch.chdir(tmp_path)  # what the blocks write (session.ipynb) stays out of the repository
    namespace = {'__name__': '__readme__'}
    for line, code in runnable:
        try: run_block(code, line, namespace)
        except Exception as e: raise AssertionError(f'the README block at line {line} failed: {type(e).__name__}: {e}\n{code}') from e
    print('skipped:', '; '.join(f'line {line}: {why}' for line, why in skipped.items()))
    assert (namespace['res'].answer, namespace['forked'].answer) == ('4000', '4')
    assert (tmp_path / 'session.ipynb').exists()
