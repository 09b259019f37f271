__version__ = "0.1.0"

from .lm import LM, ScriptedLM, ModelError
from .kernel import KernelREPL
from .events import Session, read_trace
from .core import RLM, RLMResult
from .widget import Timeline, render_html

def load_ipython_extension(ip):
    "`%load_ext rlm_nb`: register the `%%rlm` magic."
    from .magic import load_ipython_extension as load
    load(ip)
from .notebook import export, replay, fork, diff_sessions, read_notebook, load_session, NotebookError, ReplayResult
from .bridge import ReplayMismatch
