__version__ = "0.1.0"

from .lm import LM, ScriptedLM, ModelError
from .kernel import KernelREPL
from .events import Session, read_trace
from .core import RLM, RLMResult
from .widget import Timeline, render_html

_LAZY = {**dict.fromkeys(['export', 'replay', 'fork', 'diff_sessions', 'read_notebook', 'load_session', 'NotebookError',
                          'ReplayResult'], 'notebook'), 'ReplayMismatch': 'bridge'}

def __getattr__(name): # the notebook tools load nbformat (and its slow schema validator) only when used
    if name not in _LAZY: raise AttributeError(f"module 'rlm_nb' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)

def load_ipython_extension(ip):
    "`%load_ext rlm_nb`: register the `%%rlm` magic."
    from .magic import load_ipython_extension as load
    load(ip)
