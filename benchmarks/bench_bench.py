"""Benchmark of the research bench's runner: many attempts against a slow scripted model over real HTTP.

    python benchmarks/bench_bench.py [--attempts 200] [--concurrency 8] [--delay 0.1] [--rows direct,cold,warm,reused,reused-warm]

Serves the scripted solver from a ScriptedServer on 127.0.0.1, in another process (as a real model is; `--server-in-host`
puts it in this one), with a fixed delay per model call, runs `--attempts` niah attempts (600 tokens) through
`rlm_nb.bench.run`, and prints one markdown table: wall time against the ideal (every model call's delay, on the
critical path of each attempt, spread over `concurrency` workers; target ≤ 1.25×), the CPU each attempt cost (this
process, and the whole machine), the peak memory of the host process, and the share of each attempt's time spent
outside model calls. Rows: `direct` (one call per attempt: the runner alone); `rlm` (2 root turns and 1 round of
batched sub-calls) with a fresh kernel per attempt (the default), with warm kernels from a KernelPool, with kernels
reset and reused (`reuse_kernels=True`), and reused from a recycler warmed before the clock starts (the steady state of
a long run). A note computes, from a measured kernel start, why fresh kernels cannot meet the target on this machine.
Every kernel is shut down; the run directories are temporary.
"""
from __future__ import annotations
import argparse, json, os, resource, shutil, statistics, sys, tempfile, time
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

def machine_cpu() -> float:
    "CPU-seconds every process on the machine has used (not idle, not iowait): kernels are not this process's children."
    v = list(map(int, open('/proc/stat').readline().split()[1:]))
    return (sum(v) - v[3] - v[4]) / os.sysconf('SC_CLK_TCK')

def bench_row(table, srv, label, methods, calls_per_attempt, n, concurrency, delay, warm=0, reuse=False):
    tasks = make_tasks('niah', [600], n=n)
    out = Path(tempfile.mkdtemp(prefix='rlm_nb-bench-'))
    before = len(srv.requests)
    cpu, host, start = machine_cpu(), own_cpu(), time.monotonic()
    try:
        res = run(tasks, methods, model='openai/root', sub_model='openai/sub', api_base=srv.url, price='free', out=out,
                  concurrency=concurrency, warm=warm, reuse_kernels=reuse, progress=False)
        wall, cpu, host = time.monotonic() - start, machine_cpu() - cpu, own_cpu() - host
        errors = [json.loads(l)['error'] for l in (out/'errors.jsonl').read_text().splitlines()] if (out/'errors.jsonl').exists() else []
    finally: shutil.rmtree(out, ignore_errors=True)
    for e in sorted(set(errors)): table.note(f"{label}: {errors.count(e)} attempt(s) failed: {e[:300]}")
    workers = concurrency - warm
    ideal = n * calls_per_attempt * delay / workers
    model_time = calls_per_attempt * delay
    outside = 1 - model_time / statistics.mean(a.time for a in res)
    ok = sum(a.score == 1.0 for a in res)
    label += f' ({len(errors)} failed)' if errors else ''
    cores = len(os.sched_getaffinity(0))
    table.row(label, f'{len(res)} ({ok} correct)', f'{(len(srv.requests) - before) / n:.1f}', f'{wall:.1f} s',
              f'{ideal:.1f} s', f'{wall / ideal:.2f}×', 'yes' if wall / ideal <= 1.25 else '**NO**', f'{outside:.0%}',
              f'{host / n * 1000:,.0f} ms', f'{cpu / n * 1000:,.0f} ms', f'{cpu / cores / ideal:.2f}×', f'{peak_rss() / MB:,.0f} MB')
    return host / n

def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def tree_cpu(pid:int) -> float:
    "CPU-seconds used so far by process `pid` and its descendants (bwrap, the kernel)."
    import psutil
    total = 0.0
    try: procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error: return 0.0
    for p in procs:
        try: c = p.cpu_times(); total += c.user + c.system
        except psutil.Error: pass
    return total

def kernel_start_cpu(n:int=4) -> float:
    """CPU-seconds to start a sandboxed kernel (as the pool does: with rlm_nb.bridge imported) and shut it down: the
    kernel's process tree until just before shutdown, plus this process's (jupyter_client) for start and shutdown."""
    from rlm_nb.kernel import KernelREPL
    total = 0.0
    for _ in range(n):
        host = own_cpu()
        k = KernelREPL().start()
        try:
            k.execute("__import__('rlm_nb.bridge')", silent=True)
            total += tree_cpu(k.km.provisioner.process.pid)
        finally: k.shutdown()
        total += own_cpu() - host
    return total / n

ROWS = ('direct', 'cold', 'warm', 'reused', 'reused-warm')

def serve(delay:float):
    "The `--serve` mode: a ScriptedServer in this process, its URL on stdout; each line on stdin asks for the request count."
    with ScriptedServer(scripted_server_reply, delay=delay) as srv:
        print(srv.url, flush=True)
        for _ in sys.stdin: print(len(srv.requests), flush=True)

class ServerProcess:
    "The scripted model served from another process, as a real model is: its HTTP handling does not share the host's GIL."
    def __init__(self, delay:float):
        import subprocess
        self.p = subprocess.Popen([sys.executable, __file__, '--serve', str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.p.stdout.readline().strip()
    @property
    def requests(self) -> range:
        self.p.stdin.write('\n'); self.p.stdin.flush()
        return range(int(self.p.stdout.readline()))
    def __enter__(self): return self
    def __exit__(self, *exc): self.p.stdin.close(); self.p.wait(10)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--attempts', type=int, default=200)
    p.add_argument('--concurrency', type=int, default=8)
    p.add_argument('--delay', type=float, default=0.1, help='seconds per model call')
    p.add_argument('--rows', default=','.join(ROWS), help=f"which rows, comma-separated (default {','.join(ROWS)})")
    p.add_argument('--server-in-host', action='store_true', help='serve the scripted model from the host process (it then competes for its GIL)')
    p.add_argument('--serve', type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve is not None: return serve(a.serve)
    rows = [r.strip() for r in a.rows.split(',')]
    if bad := set(rows) - set(ROWS): p.error(f"unknown rows {sorted(bad)}: use {', '.join(ROWS)}")
    cores, c = len(os.sched_getaffinity(0)), a.concurrency
    print(facts(['ipykernel', 'jupyter_client', 'litellm'], f"{a.attempts} attempts per row, {a.delay:g} s per model call, the "
                f"scripted model served {'from the host process' if a.server_in_host else 'from another process'}"))
    t = Table(('run', 'attempts', 'HTTP calls / attempt', 'wall', 'ideal', 'ratio', '≤ 1.25×?', 'time outside model calls',
               'host CPU / attempt', 'machine CPU / attempt', 'CPU floor / ideal', 'host peak RSS'))
    start_cpu, host = kernel_start_cpu(), {}
    with (ScriptedServer(scripted_server_reply, delay=a.delay) if a.server_in_host else ServerProcess(a.delay)) as srv:
        from rlm_nb.lm import LM
        LM('openai/root', api_base=srv.url).complete('warm up') # litellm's import (about 3 s) is not the runner's
        if 'direct' in rows: bench_row(t, srv, f'direct, concurrency {c}', ['direct'], 1, a.attempts, c, a.delay)
        if 'cold' in rows: bench_row(t, srv, f'rlm, concurrency {c}, a fresh kernel per attempt (default)', ['rlm'], 3, a.attempts, c, a.delay)
        w = c // 4
        if 'warm' in rows: bench_row(t, srv, f'rlm, {c - w} sessions + {w} warm kernels', ['rlm'], 3, a.attempts, c, a.delay, warm=w)
        if 'reused' in rows: host['reused'] = bench_row(t, srv, f'rlm, concurrency {c}, reused kernels (reuse_kernels=True)', ['rlm'], 3, a.attempts, c, a.delay, reuse=True)
        if 'reused-warm' in rows: # the steady state of a long run: the kernels were started before the clock starts
            from rlm_nb.bench.runner import KernelRecycler
            with KernelRecycler() as rec:
                host['reused-warm'] = bench_row(t, srv, f'rlm, concurrency {c}, reused kernels started before the run (KernelRecycler().warm_up({c}))',
                          ['rlm'], 3, a.attempts, c, a.delay, reuse=rec.warm_up(c))
    ideal = a.attempts * 3 * a.delay / c
    t.note(f"Why a fresh kernel per attempt cannot meet the target on {cores} cores: starting and shutting down one sandboxed "
           f"kernel costs {start_cpu:.2f} CPU-s (the kernel's processes and jupyter_client's; measured just before, 4 kernels one at a time), so "
           f"{a.attempts} attempts need at least {a.attempts} × {start_cpu:.2f} / {cores} = {a.attempts * start_cpu / cores:.1f} s "
           f"of wall time for kernel starts alone, {a.attempts * start_cpu / cores / ideal:.1f}× the {ideal:.1f} s ideal, "
           f"whatever the concurrency or the pool.")
    for row, h in host.items():
        t.note(f"{row}: with reused kernels the run starts {c} kernels ({c} × {start_cpu:.2f} / {cores} = {c * start_cpu / cores:.1f} s "
               f"of the cores{', before the clock' if row == 'reused-warm' else ''}) and each attempt costs a reset of a few ms in its "
               f"kernel; what remains is the host's own work per attempt (litellm, the event stream, the session's notebook "
               f"and trace, the results log), {h * 1000:.0f} ms of CPU, in one process whose Python runs on one core at a "
               f"time (the GIL): {a.attempts} × {h * 1000:.0f} ms = {a.attempts * h:.1f} s, {a.attempts * h / ideal:.2f}× the "
               f"ideal on that core alone, shared with the kernels, the server and anything else on {cores} cores.")
    print(t.render())
    print(f"\nideal = attempts × calls on each attempt's critical path × {a.delay:g} s / sessions at a time. "
          "'time outside model calls' = 1 − critical-path model time / mean attempt time (kernel start, bridge, "
          "runner, HTTP client). 'machine CPU / attempt' counts every process on the machine (the kernels, the host, "
          "the scripted server in it, and anything else running); 'CPU floor / ideal' = attempts × that / cores / "
          "ideal: above 1.25× the target cannot be met on this machine whatever the scheduling.")

if __name__ == '__main__': main()
