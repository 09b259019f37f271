"""The research bench: seeded task suites, methods, a resumable runner, and reports. See nbs/12_bench_tasks.ipynb onward."""

_LAZY = {**dict.fromkeys(['Task', 'SUITES', 'make_tasks', 'load_tasks', 'save_tasks', 'score', 'SCORERS'], 'tasks'),
         **dict.fromkeys(['Attempt', 'METHODS', 'rlm', 'rlm_nosub', 'direct', 'summary', 'scripted_model', 'scripted_reply',
                          'scripted_server_reply'], 'methods'),
         **dict.fromkeys(['run', 'read_results', 'KernelRecycler', 'settings_of'], 'runner'),
         **dict.fromkeys(['report', 'plot_scaling', 'plot_cost', 'markdown_table', 'settings_label'], 'analysis')}

def __getattr__(name): # pandas and matplotlib load only when a report is asked for
    if name not in _LAZY: raise AttributeError(f"module 'rlm_nb.bench' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
