__version__ = "0.1.0"

from .core import RLM, RLMResult
from .lm import LM, ScriptedLM, ModelError
from .kernel import KernelREPL
from .events import Session, read_trace
