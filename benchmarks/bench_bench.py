"""Benchmark of the research bench's runner: many attempts against a slow scripted model over real HTTP.

    python benchmarks/bench_bench.py [--attempts 200] [--concurrency 8] [--delay 0.1]

Serves the scripted solver from a ScriptedServer on 127.0.0.1 with a fixed delay per model call, runs `--attempts`
niah attempts (600 tokens) through `rlm_nb.bench.run`, and prints one markdown table: wall time against the ideal
(every model call's delay, on the critical path of each attempt, spread over `concurrency` workers; target ≤ 1.25×),
the peak memory of the host process, and the share of each attempt's time spent outside model calls. Rows:
`direct` (one call per attempt: the runner alone), and `rlm` (a kernel per attempt: 2 root turns and 1 round of
batched sub-calls), cold and with warm kernels from a pool. Every kernel is shut down; the run directories are
temporary.
"""
from __future__ import annotations
import argparse, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlm_nb.testing import ScriptedServer
from rlm_nb.bench import make_tasks, run, scripted_server_reply
from report import MB, facts, Table

def peak_rss() -> int:
    "This process's peak resident memory (VmHWM) in bytes."
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    return 0

def bench_row(table, srv, label, methods, calls_per_attempt, n, concurrency, delay, warm=0):
    tasks = make_tasks('niah', [600], n=n)
    out = Path(tempfile.mkdtemp(prefix='rlm_nb-bench-'))
    before = len(srv.requests)
    start = time.monotonic()
    try:
        res = run(tasks, methods, model='openai/root', sub_model='openai/sub', api_base=srv.url, price='free', out=out,
                  concurrency=concurrency, warm=warm, progress=False)
        wall = time.monotonic() - start
        errors = [json.loads(l)['error'] for l in (out/'errors.jsonl').read_text().splitlines()] if (out/'errors.jsonl').exists() else []
    finally: shutil.rmtree(out, ignore_errors=True)
    for e in sorted(set(errors)): table.note(f"{label}: {errors.count(e)} attempt(s) failed: {e[:300]}")
    workers = concurrency - warm
    ideal = n * calls_per_attempt * delay / workers
    model_time = calls_per_attempt * delay
    outside = 1 - model_time / statistics.mean(a.time for a in res)
    ok = sum(a.score == 1.0 for a in res)
    label += f' ({len(errors)} failed)' if errors else ''
    table.row(label, f'{len(res)} ({ok} correct)', f'{(len(srv.requests) - before) / n:.1f}', f'{wall:.1f} s',
              f'{ideal:.1f} s', f'{wall / ideal:.2f}×', 'yes' if wall / ideal <= 1.25 else '**NO**', f'{outside:.0%}',
              f'{peak_rss() / MB:,.0f} MB')

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--attempts', type=int, default=200)
    p.add_argument('--concurrency', type=int, default=8)
    p.add_argument('--delay', type=float, default=0.1, help='seconds per model call')
    a = p.parse_args()
    print(facts(['ipykernel', 'jupyter_client', 'litellm'], f'{a.attempts} attempts per row, {a.delay:g} s per model call'))
    t = Table(('run', 'attempts', 'HTTP calls / attempt', 'wall', 'ideal', 'ratio', '≤ 1.25×?', 'time outside model calls', 'host peak RSS'))
    with ScriptedServer(scripted_server_reply, delay=a.delay) as srv:
        from rlm_nb.lm import LM
        LM('openai/root', api_base=srv.url).complete('warm up') # litellm's import (about 3 s) is not the runner's
        bench_row(t, srv, f'direct, concurrency {a.concurrency}', ['direct'], 1, a.attempts, a.concurrency, a.delay)
        bench_row(t, srv, f'rlm, concurrency {a.concurrency}, cold kernels', ['rlm'], 3, a.attempts, a.concurrency, a.delay)
        w = a.concurrency // 4
        bench_row(t, srv, f'rlm, {a.concurrency - w} sessions + {w} warm kernels', ['rlm'], 3, a.attempts, a.concurrency, a.delay, warm=w)
    print(t.render())
    print(f"\nideal = attempts × calls on each attempt's critical path × {a.delay:g} s / sessions at a time. "
          "'time outside model calls' = 1 − critical-path model time / mean attempt time (kernel start, bridge, "
          "runner, HTTP client).")

if __name__ == '__main__': main()
