"""Benchmark of rlm_nb's kernel REPL and bridge against same-run baselines.

    python benchmarks/bench_bridge.py [--quick]

Prints the machine facts, then one markdown table (measurement | ours | baseline | ratio | target | met?),
then short notes with the details behind some rows. Every baseline is measured in the same run, interleaved
with our measurement where that is possible, because the machines this runs on are small and noisy.
See benchmarks/README.md for what each row means and why each baseline was chosen.
"""
from __future__ import annotations
import argparse, contextlib, math, os, shutil, socketserver, sys, tempfile, threading, time
from pathlib import Path

os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True') # never fetch litellm's price map from the internet

import psutil, zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from rlm_nb.kernel import KernelREPL, KernelPool, sandbox_support
from rlm_nb.bridge import Bridge, install_code, write_input, describe_input, encode_request
from rlm_nb.lm import ScriptedLM, LM
from rlm_nb.testing import ScriptedServer
from rlm_nb.core import RLM

from report import MB, pct, med, ft, fx, log, facts, Table as _Table

def fmb(b): return f"{b/MB:,.0f} MB"

class Table(_Table):
    "The bridge table: each row has a target and whether it is met."
    def __init__(self): super().__init__(('measurement', 'ours', 'baseline', 'ratio', 'target', 'met?'))
    def add(self, what, ours, base, ratio, target='—', met=None):
        self.row(what, ours, base, ratio, target, 'info' if met is None else ('yes' if met else '**NO**'))

# ----------------------------------------------------------------------------------------------- helpers
def _reset_hwm() -> bool:
    "Reset this process's VmHWM (Linux: write 5 to clear_refs), so VmHWM becomes an exact peak from now on."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False

class PeakRSS:
    """Peak RSS of this process while the block runs, minus RSS at entry. Sampled by a background thread
    every 2 ms; on Linux also the exact peak from VmHWM (reset at entry), and the larger of the two is kept."""
    def __init__(self, interval=0.002): self.interval, self.proc = interval, psutil.Process()
    def __enter__(self):
        self.before = self.peak = self.proc.memory_info().rss
        self._hwm = _reset_hwm()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start()
        return self
    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)
    def stop(self):
        if not self._stop.is_set():
            self._stop.set(); self._t.join()
            self.peak = max(self.peak, self.proc.memory_info().rss, vm_hwm(os.getpid()) if self._hwm else 0)
        return self.growth
    def __exit__(self, *exc): self.stop()
    @property
    def growth(self): return self.peak - self.before

def vm_hwm(pid) -> int:
    "Peak RSS of a process over its lifetime (Linux VmHWM), in bytes; 0 if unknown."
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0

def kernel_pid(repl) -> int|None:
    try: return repl.km.provisioner.process.pid
    except AttributeError: return None

class TimedREPL(KernelREPL):
    """KernelREPL that records how long each execute took, including the silent setup run inside start().
    With `bridge`, each cell is bracketed by bridge.begin_cell/end_cell, as RLM does for every code block."""
    def __init__(self, *a, bridge=None, **k): super().__init__(*a, **k); self.durations, self.bridge = [], bridge
    def execute(self, code, **kw):
        t = time.perf_counter()
        if self.bridge is not None: self.bridge.begin_cell(0, len(self.durations))
        try: return super().execute(code, **kw)
        finally:
            if self.bridge is not None: self.bridge.end_cell()
            self.durations.append(time.perf_counter() - t)

class _SameInterpreter(KernelSpecManager):
    "The same argv rlm_nb launches (this interpreter, ipykernel_launcher, same flags), nothing else."
    def get_kernel_spec(self, kernel_name, *a, **k):
        return KernelSpec(argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}',
                                '--HistoryManager.enabled=False', '--IPKernelApp.log_level=ERROR'],
                          display_name='bench-bare', language='python')

@contextlib.contextmanager
def bare_kernel():
    "A plain jupyter_client KernelManager + BlockingKernelClient; yields (km, kc) once the kernel is ready."
    km, kc = KernelManager(kernel_spec_manager=_SameInterpreter()), None
    try:
        km.start_kernel()
        kc = km.client(); kc.start_channels()
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        if kc is not None: kc.stop_channels()
        if km.has_kernel: km.shutdown_kernel(now=not km.is_alive())

@contextlib.contextmanager
def tcp_nodelay():
    "Make every socketserver stream handler set TCP_NODELAY (only used for one diagnostic row)."
    old = socketserver.StreamRequestHandler.disable_nagle_algorithm
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    try: yield
    finally: socketserver.StreamRequestHandler.disable_nagle_algorithm = old

def bridged(lm, concurrency=8, **kernel_options):
    "(KernelREPL with the bridge installed, Bridge) -- the way RLM wires them, minus inputs."
    b = Bridge(lm, concurrency=concurrency)
    return TimedREPL(startup_code=install_code({'inputs': [], 'tools': []}), on_request=b, bridge=b, **kernel_options), b

def check(r, expect=None):
    if not r.ok or (expect is not None and r.text.strip() != expect):
        raise RuntimeError(f"cell failed or gave an unexpected result ({r.status}): {r.text[:500]!r}")
    return r

def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t

# ----------------------------------------------------------------------------------------------- 1. start
def bench_start(T: Table, n: int):
    log(f"1. kernel start ({n} starts of each kind, interleaved)")
    ours, base, bridge_ = [], [], []
    # one unmeasured start of each kind first: the first start in a process pays for cold imports and caches
    for i in range(n + 1):
        t = time.perf_counter()
        with KernelREPL() as k: dt = time.perf_counter() - t; assert k.is_alive
        if i: ours.append(dt)
        t = time.perf_counter()
        with bare_kernel(): dt = time.perf_counter() - t
        if i: base.append(dt)
        b = Bridge(ScriptedLM(lambda m: 'ok'))
        t = time.perf_counter()
        with KernelREPL(startup_code=install_code({'inputs': [], 'tools': []}), on_request=b): dt = time.perf_counter() - t
        b.close()
        if i: bridge_.append(dt)
    T.add(f"kernel start, KernelREPL until ready (median of {n})", ft(med(ours)), f"bare KernelManager {ft(med(base))}",
          fx(med(ours) / med(base)))
    T.add(f"kernel start + bridge install (what RLM starts; median of {n})", ft(med(bridge_)),
          f"bare KernelManager {ft(med(base))}", fx(med(bridge_) / med(base)))

# ----------------------------------------------------------------------------------------------- 2. trivial cell
def iopub_timeline(kc, n=100, code='1+1'):
    "p50 of when each reply message was created in the kernel (header date) and received here, in ms after send."
    import datetime
    poller = zmq.Poller()
    for s in (kc.iopub_channel.socket, kc.shell_channel.socket): poller.register(s, zmq.POLLIN)
    res, sample = {}, {}
    for _ in range(n):
        t0, p0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
        mid = kc.execute(code)
        idle = reply = False
        while not (idle and reply):
            ready = dict(poller.poll(5000))
            if not ready: raise RuntimeError('no reply from the kernel')
            for ch in (kc.iopub_channel, kc.shell_channel):
                if ch.socket not in ready: continue
                while ch.msg_ready():
                    m = ch.get_msg(timeout=0); got = (time.perf_counter() - p0) * 1e3
                    if m['parent_header'].get('msg_id') != mid: continue
                    t = m['msg_type'] + (f"({m['content']['execution_state']})" if m['msg_type'] == 'status' else '')
                    if t == 'stream': sample.setdefault(t, m['content']['text'][:80])
                    res.setdefault(t, []).append(((m['header']['date'] - t0).total_seconds() * 1e3, got))
                    idle = idle or t == 'status(idle)'
                    reply = reply or ch is kc.shell_channel
    order = sorted(res, key=lambda t: med(a for a, _ in res[t]))
    def extra(t):
        if len(res[t]) == n: return ''
        return f" (in {len(res[t])} of {n} cells" + (f": {sample[t]!r}" if t in sample else '') + ')'
    return ', '.join(f"{t} {med(a for a, _ in res[t]):.1f}→{med(b for _, b in res[t]):.1f}{extra(t)}" for t in order)

def minimal_execute(kc, poller, code='1+1'):
    "The least a client can do: send execute_request, wait for execute_reply and status idle, parse nothing else."
    mid = kc.execute(code)
    idle = reply = False
    while not (idle and reply):
        ready = dict(poller.poll(5000))
        if not ready: raise RuntimeError('no reply from the kernel')
        for ch in (kc.iopub_channel, kc.shell_channel):
            if ch.socket not in ready: continue
            while ch.msg_ready():
                m = ch.get_msg(timeout=0)
                if m['parent_header'].get('msg_id') != mid: continue
                if ch is kc.shell_channel: reply = True
                elif m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle': idle = True

def bench_trivial(T: Table, n: int):
    log(f"2. trivial cell 1+1 ({n} runs each: KernelREPL.execute, execute_interactive, in-process exec)")
    ours, ei, ex, mini = [], [], [], []
    ns, hook = {}, (lambda msg: None)
    with KernelREPL() as k:
        kc = k.kc
        poller = zmq.Poller()
        for s in (kc.iopub_channel.socket, kc.shell_channel.socket): poller.register(s, zmq.POLLIN)
        for _ in range(30):
            check(k.execute('1+1'), '2'); kc.execute_interactive('1+1', output_hook=hook, timeout=30); minimal_execute(kc, poller)
        block = 25
        for _ in range(math.ceil(n / block)): # interleaved blocks, so drift on the machine hits both alike
            for _ in range(block):
                t = time.perf_counter(); r = k.execute('1+1'); ours.append(time.perf_counter() - t)
                assert r.ok and r.outputs[0]['data']['text/plain'] == '2'
            for _ in range(block):
                t = time.perf_counter(); m = kc.execute_interactive('1+1', output_hook=hook, timeout=30); ei.append(time.perf_counter() - t)
                assert m['content']['status'] == 'ok'
            for _ in range(block):
                t = time.perf_counter(); minimal_execute(kc, poller); mini.append(time.perf_counter() - t)
        timeline = iopub_timeline(kc, n=min(100, n))
    for _ in range(n): # exec of the source string (compile included), as a cell would be
        t = time.perf_counter(); exec('1+1', ns); ex.append(time.perf_counter() - t)
    for q, name in ((0.5, 'p50'), (0.9, 'p90')):
        met = pct(ours, q) <= 0.005 if q == 0.5 else None
        target = '≤ 5 ms' if q == 0.5 else '—'
        T.add(f"trivial cell `1+1` {name} vs jupyter_client execute_interactive ({n} runs)", ft(pct(ours, q)),
              f"execute_interactive {ft(pct(ei, q))}", fx(pct(ours, q) / pct(ei, q)), target, met)
        T.add(f"trivial cell `1+1` {name} vs in-process exec", ft(pct(ours, q)), f"exec {ft(pct(ex, q))}",
              fx(pct(ours, q) / pct(ex, q)))
    T.note(f"`1+1`: a minimal hand-written zmq client loop on the same kernel (send, wait for execute_reply and "
           f"idle, nothing else), interleaved with the rows above: p50 {ft(med(mini))}, p90 {ft(pct(mini, .9))}.")
    T.note(f"`1+1` on the KernelREPL kernel, p50 ms after the host sent execute_request: message created in the "
           f"kernel (header date) → received by the host: {timeline}.")
    return med(ours)

# ----------------------------------------------------------------------------------------------- 3. llm_query overhead
def paired(k, n, a_code, b_code, a_expect, b_expect, warm=20):
    "Alternate two cells n times; returns (a times, b times)."
    for _ in range(warm): check(k.execute(a_code), a_expect); check(k.execute(b_code), b_expect)
    a, b = [], []
    for _ in range(n):
        t = time.perf_counter(); r1 = k.execute(a_code); a.append(time.perf_counter() - t)
        t = time.perf_counter(); r2 = k.execute(b_code); b.append(time.perf_counter() - t)
        assert r1.ok and r2.ok, (r1.text, r2.text)
    return a, b

LOOP_CELL = """import time as _t
_ts = []
for _i in range({n}):
    _t0 = _t.perf_counter(); llm_query("x"); _ts.append(_t.perf_counter() - _t0)
_a, _z = sorted(_ts[:100]), sorted(_ts[-100:])
print(_a[50], _z[50], sum(_ts))"""

def bench_llm_query(T: Table, n: int, n_http: int, n_loop: int):
    log(f"3. llm_query overhead, instant ScriptedLM ({n} pairs)")
    # the host-side cost of one bridge request, for reference (measured first, while no kernel is shutting down)
    req = encode_request('llm_query', 1, prompt='x', model=None)
    b2 = Bridge(ScriptedLM(lambda m: 'ok'))
    host = [timed(lambda: (b2.begin_cell(0, 0), b2(req), b2.end_cell())) for _ in range(200)]
    b2.close()
    repl, b = bridged(ScriptedLM(lambda m: 'ok'))
    try:
        with repl:
            triv, llm = paired(repl, n, '1+1', 'llm_query("x")', '2', "'ok'")
            log(f"3. {n_loop} llm_query calls in a loop inside one cell")
            first, last, total = map(float, check(repl.execute(LOOP_CELL.format(n=n_loop))).text.split())
    finally: b.close()
    diff = [y - x for x, y in zip(triv, llm)]
    T.add(f"llm_query overhead, instant model: p50 of (llm_query cell − `1+1` cell), {n} pairs", ft(med(diff)),
          f"`1+1` cell {ft(med(triv))}", fx(med(llm) / med(triv)), '≤ 3 ms', med(diff) <= 0.003)
    T.add("llm_query(\"x\") cell itself, p50 (p90)", f"{ft(med(llm))} ({ft(pct(llm, .9))})",
          f"`1+1` {ft(med(triv))} ({ft(pct(triv, .9))})", fx(med(llm) / med(triv)))
    T.add(f"{n_loop} × llm_query in a loop in ONE cell: per-call p50 of the last 100 vs the first 100", ft(last),
          f"first 100 {ft(first)}", fx(last / first))
    T.note(f"{n_loop} llm_query calls in one cell took {ft(total)} in all ({ft(total / n_loop)} per call on average).")
    T.note(f"llm_query, instant model: the host-side Bridge alone (decode, record, ScriptedLM, encode) takes "
           f"{ft(med(host))} p50; the rest of the overhead is the stdin round trip (input_request → worker thread → "
           f"input_reply) and the kernel's flushes around raw_input.")
    if n_http:
        for label, ctx in (('', contextlib.nullcontext()), (' [server with TCP_NODELAY]', tcp_nodelay())):
            log(f"3b. llm_query through litellm to ScriptedServer{label} ({n_http} triples)")
            with ctx, ScriptedServer(lambda body: 'ok') as srv:
                lm = LM('openai/x', api_base=srv.url)
                for _ in range(3): lm.complete('x') # imports litellm
                repl, b = bridged(lm)
                try:
                    with repl:
                        for _ in range(10): check(repl.execute('llm_query("x")'), "'ok'")
                        triv, llm, direct = [], [], []
                        for _ in range(n_http):
                            a, c = paired(repl, 1, '1+1', 'llm_query("x")', '2', "'ok'", warm=0)
                            triv += a; llm += c; direct.append(timed(lambda: lm.complete('x')))
                finally: b.close()
            diff = [y - x for x, y in zip(triv, llm)]
            T.add(f"llm_query via litellm → ScriptedServer HTTP{label}: llm cell − `1+1` cell, p50",
                  ft(med(diff)), f"direct LM.complete {ft(med(direct))}", fx(med(diff) / med(direct)))

SESSION_CELL = """```repl
import time as _t
_ts = []
for _i in range({n}):
    _t0 = _t.perf_counter(); llm_query("x"); _ts.append(_t.perf_counter() - _t0)
print(sorted(_ts)[len(_ts) // 2], sum(_ts))
```"""

def bench_session(T: Table, cells: int, n: int):
    "A whole RLM session (scripted root) whose every cell makes n llm_query calls: does a call get slower as the session grows?"
    log(f"3c. RLM session: {cells} cells × {n} llm_query calls")
    root = ScriptedLM([SESSION_CELL.format(n=n)] * cells + ['FINAL(done)'])
    res = RLM(root, sub_model=ScriptedLM(lambda m: 'ok'), verbose=False, cache=False)('benchmark', context='x')
    if res.answer != 'done' or len(res.session.cells) != cells: raise RuntimeError(f"scripted session failed: {res!r}")
    per = [tuple(map(float, c.text.split())) for c in res.session.cells]
    T.add(f"RLM session, {cells} cells × {n} llm_query: per-call p50 in the last cell vs the first", ft(per[-1][0]),
          f"first cell {ft(per[0][0])}", fx(per[-1][0] / per[0][0]))
    T.note(f"RLM session of {cells} × {n} llm_query calls: each cell's calls took {', '.join(ft(t) for _, t in per)} "
           f"in all; the whole session {ft(res.elapsed)}.")

# ----------------------------------------------------------------------------------------------- 4. batched
BATCH_CELL = '_r = llm_query_batched([f"prompt {i}" for i in range(64)])\nlen(_r)'

def run_batches(lm, conc, reps):
    "Times of `reps` batched cells, and per cell (request reached the host, Bridge done) in s after the send."
    repl, b = bridged(lm, concurrency=conc)
    mark = {}
    def on_request(prompt):
        mark['in'] = time.perf_counter()
        try: return b(prompt)
        finally: mark['out'] = time.perf_counter()
    repl.on_request = on_request
    try:
        with repl:
            check(repl.execute('llm_query("warm")'))
            ts, phases = [], []
            for _ in range(reps):
                t = time.perf_counter(); check(repl.execute(BATCH_CELL), '64'); ts.append(time.perf_counter() - t)
                phases.append((mark['in'] - t, mark['out'] - t))
    finally: b.close()
    return ts, phases

def bench_batched(T: Table, reps: int, http: bool):
    for conc in (8, 64):
        log(f"4. 64 batched calls, 100 ms ScriptedLM, concurrency {conc} ({reps} reps)")
        ts, ph = run_batches(ScriptedLM(lambda m: 'ok', delay=0.1), conc, reps)
        ideal = math.ceil(64 / conc) * 0.1
        T.add(f"64 × llm_query_batched, 100 ms model, concurrency {conc} (median of {reps})", ft(med(ts)),
              f"ideal {ft(ideal)}", fx(med(ts) / ideal), '≤ 1.25x ideal', med(ts) / ideal <= 1.25)
        if conc == 64:
            T.add("first batch of a fresh Bridge, concurrency 64 (starts 64 worker threads; once per session)",
                  ft(ts[0]), f"ideal {ft(ideal)}", fx(ts[0] / ideal))
        T.note(f"batched, concurrency {conc}: all runs {', '.join(ft(t) for t in ts)} (the first run of a Bridge "
               f"also starts its worker threads). Median phases: request reaches the host {ft(med(a for a, _ in ph))} "
               f"after the cell was sent; Bridge busy {ft(med(o - i for i, o in ph))}; reply → cell done "
               f"{ft(med(t - o for t, (_, o) in zip(ts, ph)))}.")
    # host-side reference: the same batch straight through a Bridge, no kernel
    time.sleep(1) # let the last kernel finish shutting down
    b = Bridge(ScriptedLM(lambda m: 'ok', delay=0.1), concurrency=64)
    req = encode_request('llm_query_batched', 1, prompts=[f"prompt {i}" for i in range(64)], model=None)
    host = [timed(lambda: (b.begin_cell(0, 0), b(req), b.end_cell())) for _ in range(reps + 1)]
    b.close()
    T.note(f"batched, concurrency 64, Bridge called directly on the host (no kernel): first {ft(host[0])}, then "
           f"median {ft(med(host[1:]))}.")
    if http:
        for label, ctx in (('', contextlib.nullcontext()), (' [server with TCP_NODELAY]', tcp_nodelay())):
            log(f"4b. 64 batched calls through litellm to ScriptedServer(delay=0.1){label}")
            with ctx, ScriptedServer(lambda body: 'ok', delay=0.1) as srv:
                lm = LM('openai/x', api_base=srv.url)
                lm.complete('x')
                ts, _ = run_batches(lm, 8, reps)
                inflight = srv.max_in_flight
            T.add(f"64 × batched via litellm → ScriptedServer(delay=0.1) HTTP{label}, concurrency 8", ft(med(ts)),
                  f"ideal {ft(0.8)}", fx(med(ts) / 0.8), '(info)')
            if not label: T.note(f"batched over HTTP: the server saw at most {inflight} requests in flight.")

# ----------------------------------------------------------------------------------------------- 5. context load
def make_text(size: int) -> str:
    "Synthetic log-like ASCII text of exactly `size` characters."
    levels, status = ('INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG'), (200, 200, 200, 201, 304, 404, 500)
    block = ''.join(f"2024-05-{i % 28 + 1:02d}T{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d}.{i % 1000:03d}Z "
                    f"{levels[i % 5]:<5} [worker-{i % 16:02d}] req={i * 2654435761 % 2**32:08x} "
                    f"GET /api/v1/items/{i % 997} status={status[i % 7]} latency_ms={i * 37 % 250}\n" for i in range(8000))
    n, rem = divmod(size, len(block))
    return block * n + block[:rem]

def write_plain_chunks(text: str, path: Path, chunk=1 << 20):
    with open(path, 'w', encoding='utf-8', newline='') as f:
        for i in range(0, len(text), chunk): f.write(text[i:i + chunk])

READ_CODE = """import time as _t
_t0 = _t.perf_counter()
with open({path!r}, encoding='utf-8') as _f: _x = _f.read()
_dt = _t.perf_counter() - _t0
assert len(_x) == {size}
del _x, _f
print(repr(_dt))"""

MMAP_CODE = """import time as _t, mmap as _m
_t0 = _t.perf_counter()
with open({path!r}, 'rb') as _f, _m.mmap(_f.fileno(), 0, access=_m.ACCESS_READ) as _mm: _x = str(_mm, 'utf-8', 'replace')
_dt = _t.perf_counter() - _t0
assert len(_x) == {size}
del _x, _f, _mm
print(repr(_dt))"""

def kernel_read(repl, path, size, code=READ_CODE) -> float:
    return float(check(repl.execute(code.format(path=str(path), size=size))).text.strip())

def load_once(value, wd: Path, size: int, **kernel_options):
    "One RLM-style load of `value` (a str or a Path); returns a dict of timings and memory, plus the baseline."
    wd.mkdir()
    out = {}
    loaded = {}
    def on_comm(c):
        d = c.get('data') or {}
        if d.get('op') == 'inputs_loaded': loaded.update(d['inputs'][0])
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        spec = write_input(value, wd, 'context')
        out['write'] = time.perf_counter() - t0
        repl = TimedREPL(cwd=str(wd), startup_code=install_code({'inputs': [spec], 'tools': []}), on_comm=on_comm,
                         **kernel_options)
        t1 = time.perf_counter()
        with repl:
            out['start_total'] = time.perf_counter() - t1
            out['host_growth'] = mem.stop()
            out['load'] = repl.durations[0] # the silent setup run: install() loading the input
            out['kernel_seconds'] = loaded.get('seconds')
            out['kernel_hwm'] = vm_hwm(kernel_pid(repl))
            check(repl.execute('len(context)'), str(size))
            # baselines, in the same (warm) kernel
            if isinstance(value, str):
                plain = wd / 'plain.txt'
                with PeakRSS() as pm:
                    t = time.perf_counter()
                    with open(plain, 'w', encoding='utf-8') as f: f.write(value)
                    out['plain_write'] = time.perf_counter() - t
                out['plain_growth'] = pm.growth
                out['kernel_read'] = kernel_read(repl, plain, size)
                plain.unlink()
                t = time.perf_counter(); write_plain_chunks(value, plain); out['chunk_write'] = time.perf_counter() - t
                out['kernel_mmap'] = kernel_read(repl, plain, size, MMAP_CODE)
                plain.unlink()
            else:
                out['kernel_read'] = kernel_read(repl, value, size)
                out['kernel_mmap'] = kernel_read(repl, value, size, MMAP_CODE)
    shutil.rmtree(wd, ignore_errors=True)
    out['ours'] = out['write'] + out['load']
    out['base'] = out.get('plain_write', 0.0) + out['kernel_read']
    out['floor'] = out.get('chunk_write', 0.0) + out['kernel_mmap']
    return out

def bench_context(T: Table, sizes, reps: dict, tmp: Path):
    for size in sizes:
        label = f"{size // MB:,} MB" if size < 1000 * MB else f"{size / (1000 * MB):g} GB"
        log(f"5. context load {label}: generating")
        value = make_text(size) # created before any measurement, so it is not counted as growth
        src = tmp / f'context_{size}.txt'
        write_plain_chunks(value, src)
        t = time.perf_counter(); describe_input('context', value); t_desc = time.perf_counter() - t
        runs = {'str': [], 'path': []}
        for i in range(reps[size]):
            log(f"5. context load {label}: rep {i + 1}/{reps[size]}")
            runs['str'].append(load_once(value, tmp / f'wd-str-{i}', size))
            runs['path'].append(load_once(src, tmp / f'wd-path-{i}', size))
        del value
        src.unlink()
        target_t = '≤ 3 s' if size >= 1000 * MB else '—'
        for kind, rs in runs.items():
            m = lambda k: med([r[k] for r in rs])
            ours, base = m('ours'), m('base')
            what = 'write_input(str) + kernel load' if kind == 'str' else 'write_input(Path) + kernel load'
            bl = (f"host open().write {ft(m('plain_write'))} + kernel open().read {ft(m('kernel_read'))}" if kind == 'str'
                  else f"kernel open().read {ft(m('kernel_read'))}")
            T.add(f"context {label}, {what} (median of {len(rs)})", ft(ours), bl, fx(ours / base), target_t,
                  ours <= 3 if size >= 1000 * MB else None)
            fl = (f"1 MiB-chunk write {ft(m('chunk_write'))} + kernel mmap→str {ft(m('kernel_mmap'))}" if kind == 'str'
                  else f"kernel mmap→str {ft(m('kernel_mmap'))}")
            T.add(f"context {label}, {kind}: same, vs a faster floor", ft(ours), fl, fx(ours / m('floor')))
            T.add(f"context {label}, {kind}: host RSS growth, peak", fmb(m('host_growth')),
                  f"plain open().write {fmb(m('plain_growth'))}" if kind == 'str' else '—',
                  fx(m('host_growth') / m('plain_growth')) if kind == 'str' and m('plain_growth') > 0 else '—',
                  '≤ 100 MB', m('host_growth') <= 100 * MB)
            T.note(f"context {label} {kind}: write_input {ft(m('write'))}, kernel load (setup cell) {ft(m('load'))} "
                   f"(install() reports {med([r['kernel_seconds'] for r in rs])} s), kernel start incl. load "
                   f"{ft(m('start_total'))}, kernel peak RSS {fmb(m('kernel_hwm'))}"
                   + (f"; describe_input (RLM calls it first) {ft(t_desc)}" if kind == 'str' else '') + '.')

# ----------------------------------------------------------------------------------------------- 6. the sandbox
SETUP = install_code({'inputs': [], 'tools': []})

def bench_sandbox(T: Table, n: int, n_cells: int, size: int, reps: int, tmp: Path):
    "Each sandboxed cost against the unsandboxed kernel, interleaved in this run; then a warm pool against a cold start."
    if not sandbox_support()['ok']:
        T.note(f"sandbox rows skipped: {sandbox_support()['why']}"); return
    on, off = dict(sandbox=True), dict(sandbox=False)
    log(f"6. sandbox: kernel start + bridge install ({n} of each, interleaved)")
    starts = {'on': [], 'off': []}
    for i in range(n + 1):
        for kind, opts in (('on', on), ('off', off)):
            t = time.perf_counter()
            with KernelREPL(startup_code=SETUP, **opts): dt = time.perf_counter() - t
            if i: starts[kind].append(dt)
    a, b = med(starts['on']), med(starts['off'])
    T.add(f"sandbox: kernel start + bridge install (median of {n})", ft(a), f"unsandboxed {ft(b)}", fx(a / b), '≤ +15%', a / b <= 1.15)
    log(f"6. sandbox: trivial cell and llm_query ({n_cells} of each, alternating kernels)")
    (rs, bs), (ru, bu) = bridged(ScriptedLM(lambda m: 'ok'), **on), bridged(ScriptedLM(lambda m: 'ok'), **off)
    cells = {k: [] for k in ('triv_on', 'triv_off', 'llm_on', 'llm_off')}
    try:
        with rs, ru:
            for _ in range(20): check(rs.execute('1+1')); check(ru.execute('1+1')); check(rs.execute('llm_query("x")')); check(ru.execute('llm_query("x")'))
            for _ in range(n_cells):
                for kind, k in (('on', rs), ('off', ru)):
                    cells['triv_' + kind].append(timed(lambda: check(k.execute('1+1'), '2')))
                    cells['llm_' + kind].append(timed(lambda: check(k.execute('llm_query("x")'), "'ok'")))
    finally: bs.close(); bu.close()
    a, b = med(cells['triv_on']), med(cells['triv_off'])
    T.add(f"sandbox: trivial cell `1+1` p50 ({n_cells} runs)", ft(a), f"unsandboxed {ft(b)}", fx(a / b), '≤ +5%', a / b <= 1.05)
    a, b = med(cells['llm_on']), med(cells['llm_off'])
    T.add(f"sandbox: `llm_query(\"x\")` cell p50, instant model ({n_cells} runs)", ft(a), f"unsandboxed {ft(b)}", fx(a / b), '≤ +5%', a / b <= 1.05)
    do, du = med(cells['llm_on']) - med(cells['triv_on']), med(cells['llm_off']) - med(cells['triv_off'])
    T.note(f"sandbox: llm_query overhead over a `1+1` cell, p50 difference: {ft(do)} sandboxed, {ft(du)} unsandboxed.")
    label = f"{size // MB:,} MB" if size < 1000 * MB else f"{size / (1000 * MB):g} GB"
    log(f"6. sandbox: context load {label} ({reps} of each, interleaved)")
    value, loads = make_text(size), {'on': [], 'off': []}
    for i in range(reps):
        for kind, opts in (('on', on), ('off', off)) if i % 2 else (('off', off), ('on', on)):
            loads[kind].append(load_once(value, tmp / f'sb-{kind}-{i}', size, **opts))
    del value
    m = lambda kind, key: med([r[key] for r in loads[kind]])
    a, b = m('on', 'load'), m('off', 'load')
    # the sandbox changes only the kernel's side: the host's write_input is the same code in the same process
    T.add(f"sandbox: context {label}, kernel load (the setup cell; median of {reps})", ft(a), f"unsandboxed {ft(b)}",
          fx(a / b), '≤ +5%', a / b <= 1.05)
    T.note(f"sandbox: context {label}, write_input + kernel load: {ft(m('on', 'ours'))} sandboxed, {ft(m('off', 'ours'))} "
           f"unsandboxed; install() itself reports {m('on', 'kernel_seconds'):.3f} s vs {m('off', 'kernel_seconds'):.3f} s.")
    log(f"6. warm pool: take() + prepare(bridge install) ({n} sessions) vs cold start")
    warm, cold = [], []
    with KernelPool(1, **on) as pool:
        for i in range(n + 1):
            while pool.ready < 1: time.sleep(0.05) # the refill has finished: this is a warm take
            time.sleep(0.3)
            t = time.perf_counter(); k = pool.take(); k.prepare(SETUP); dt = time.perf_counter() - t
            k.shutdown()
            t = time.perf_counter()
            with KernelREPL(startup_code=SETUP, **on): dc = time.perf_counter() - t
            if i: warm.append(dt); cold.append(dc)
    a, b = med(warm), med(cold)
    T.add(f"sandbox: session start from a warm KernelPool, take + bridge install, p50 of {n}", ft(a),
          f"cold start {ft(b)}", fx(a / b), '≤ 50 ms', a <= 0.05)

# ----------------------------------------------------------------------------------------------- main
# ----------------------------------------------------------------------------------------------- 7. remote kernels
def remote_bridged(srv, lm, concurrency=8):
    "(RemoteKernel with the bridge installed, Bridge) on the server `srv`."
    from rlm_nb.remote import RemoteKernel
    b = Bridge(lm, concurrency=concurrency)
    return RemoteKernel(srv, startup_code=install_code({'inputs': [], 'tools': []}), on_request=b), b

def trivial_p(k, n):
    for _ in range(20): check(k.execute('1+1'), '2')
    ts = []
    for _ in range(n): ts.append(timed(lambda: check(k.execute('1+1'), '2')))
    return ts

@contextlib.contextmanager
def stock_socket():
    "Remote kernels without our quick ACKs: the client as a plain websocket client would be."
    import socket, rlm_nb.remote as remote
    saved, remote._QuickAckSocket = remote._QuickAckSocket, socket.socket
    try: yield
    finally: remote._QuickAckSocket = saved

def raw_trivial(srv, n):
    "`1+1` p50 times through a bare websocket loop on a kernel of its own: the floor for any client of `srv`."
    import json, uuid
    from websockets.sync.client import connect
    from jupyter_client.session import Session
    from rlm_nb.remote import v1_pack, v1_unpack, _tcp, V1
    from rlm_nb.kernel import execute_content
    kid, sess = srv.start_kernel(), Session(key=b'bench')
    try:
        u = srv.url.rsplit(':', 1)
        with connect(f"{srv.ws_url}/api/kernels/{kid}/channels?session_id={uuid.uuid4().hex}", sock=_tcp('127.0.0.1', int(u[1]), 30),
                     additional_headers=srv.headers(), subprotocols=[V1], compression=None, max_size=None, ping_interval=None) as ws:
            def cell():
                m = sess.msg('execute_request', execute_content('1+1'))
                ws.send(v1_pack('shell', [sess.pack(m['header']), b'{}', b'{}', sess.pack(m['content'])]))
                idle = rep = False
                while not (idle and rep):
                    ch, parts = v1_unpack(ws.recv())
                    if json.loads(parts[1]).get('msg_id') != m['header']['msg_id']: continue
                    if ch == 'shell': rep = True
                    elif json.loads(parts[0])['msg_type'] == 'status' and json.loads(parts[3])['execution_state'] == 'idle': idle = True
            for _ in range(20): cell()
            return [timed(cell) for _ in range(n)]
    finally: srv.rest('DELETE', f'/api/kernels/{kid}', ok404=True)

def bench_remote(T: Table, n_start: int, n: int, reps: int, upload: int, tmp: Path):
    from rlm_nb.remote import RemoteKernel, serve_jupyter
    log(f"7. remote kernels on a local jupyter server and kernel gateway (loopback), each against a local kernel")
    with serve_jupyter('server', limit_rate=False) as srv, serve_jupyter('gateway', limit_rate=False) as kg:
        with RemoteKernel(srv), KernelREPL(): pass # cold imports on both sides
        starts = {'local': [], 'server': [], 'gateway': []}
        for _ in range(n_start): # interleaved
            for name, make in (('local', KernelREPL), ('server', lambda: RemoteKernel(srv)), ('gateway', lambda: RemoteKernel(kg))):
                k = make(); starts[name].append(timed(k.start)); k.shutdown()
        loc = med(starts['local'])
        for name, where in (('server', 'jupyter server'), ('gateway', 'kernel gateway')):
            T.add(f"remote kernel start on a {where} (POST, websocket, kernel_info, private directory), {n_start} starts",
                  ft(med(starts[name])), f"local KernelREPL {ft(loc)}", fx(med(starts[name]) / loc))
        T.note(f"remote start: the local KernelREPL is {'sandboxed' if sandbox_support()['ok'] else 'not sandboxed'} "
               "(the default); a remote kernel is never sandboxed by rlm_nb.")
        log(f"7. trivial cell `1+1`, {n} runs each")
        with KernelREPL() as lk: local = trivial_p(lk, n)
        for name, server in (('jupyter server', srv), ('kernel gateway', kg)):
            with RemoteKernel(server) as rk: ours = trivial_p(rk, n)
            T.add(f"trivial cell `1+1` p50 on a {name}, remote vs local", ft(med(ours)), f"local {ft(med(local))}",
                  fx(med(ours) / med(local)), '≤ 1.3x', med(ours) / med(local) <= 1.3)
        floor = raw_trivial(srv, n)
        with RemoteKernel(srv) as rk: ours = trivial_p(rk, n)
        T.add(f"trivial cell `1+1` p50 on a jupyter server: RemoteKernel vs a minimal client (one thread: send, recv until "
              "reply and idle, nothing else)", ft(med(ours)), f"minimal client {ft(med(floor))}", fx(med(ours) / med(floor)))
        T.note("the minimal remote client shows what any client pays on this server: the gap between it and the local "
               "kernel is the server's own hop (websocket ⇄ zmq, one more process on the same 2 cores), not rlm_nb's client.")
        with stock_socket(), RemoteKernel(srv) as rk: stock = trivial_p(rk, min(n, 50))
        T.add("trivial cell `1+1` p50 on a jupyter server WITHOUT our quick ACKs (the 44 ms Nagle stall)", ft(med(stock)),
              f"local {ft(med(local))}", fx(med(stock) / med(local)))
        with serve_jupyter('server', nodelay=True, limit_rate=False) as nd, stock_socket(), RemoteKernel(nd) as rk:
            fixed = trivial_p(rk, min(n, 50))
        T.add("trivial cell `1+1` p50, no quick ACKs but the server runs NoDelayConnection", ft(med(fixed)),
              f"local {ft(med(local))}", fx(med(fixed) / med(local)))

        log(f"7. llm_query overhead and 64 batched calls, remote vs local")
        lm = ScriptedLM(lambda m: 'ok')
        over = {}
        for name, (k, b) in (('local', bridged(lm)), ('remote', remote_bridged(srv, lm))):
            try:
                with k: triv, llm = paired(k, n, '1+1', 'llm_query("x")', '2', "'ok'"); over[name] = med([y - x for x, y in zip(triv, llm)])
            finally: b.close()
        T.add(f"llm_query overhead (llm_query cell − `1+1` cell, p50 of {n} pairs), remote vs local", ft(over['remote']),
              f"local {ft(over['local'])}", fx(over['remote'] / over['local']))
        slow = ScriptedLM(lambda m: 'ok', delay=0.1)
        batch = {}
        for name, (k, b) in (('local', bridged(slow)), ('remote', remote_bridged(srv, slow))):
            try:
                with k:
                    check(k.execute('llm_query("warm")'))
                    batch[name] = med([timed(lambda: check(k.execute(BATCH_CELL), '64')) for _ in range(reps)])
            finally: b.close()
        T.add(f"64 × llm_query_batched, 100 ms model, concurrency 8 (median of {reps}), remote vs local", ft(batch['remote']),
              f"local {ft(batch['local'])}", fx(batch['remote'] / batch['local']), '(ideal 0.80 s)')

        log(f"7. {fmb(upload)} input sent to the kernel")
        path = tmp/'upload.txt'
        write_plain_chunks(make_text(upload), path)
        rates = {}
        for name, server in (('jupyter server', srv), ('kernel gateway', kg)):
            with RemoteKernel(server) as rk:
                rates[name] = med([upload / MB / timed(lambda: rk.put_inputs([{'name': 'ctx', 'path': str(path), 'format': 'text'}]))
                                   for _ in range(reps)])
        local_write = med([upload / MB / timed(lambda: write_input(path.read_text(), tmp, 'copy')) for _ in range(reps)])
        for name, r in rates.items():
            T.add(f"{fmb(upload)} input sent over the websocket to a {name} kernel (chunks of 4 MiB, acknowledged)",
                  f"{r:,.0f} MB/s", f"local write_input {local_write:,.0f} MB/s", fx(r / local_write))
        from websocket._abnf import ABNF
        data, key = os.urandom(8 << 20), os.urandom(4)
        from websockets.frames import apply_mask # the C speedup where it is built
        ours = med([timed(lambda: apply_mask(data, key)) for _ in range(5)])
        theirs = med([timed(lambda: ABNF.mask(key, data)) for _ in range(5)])
        T.add("masking one 8 MiB frame: websockets (C) vs websocket-client (pure Python)", f"{8.39 / ours:,.0f} MB/s",
              f"websocket-client {8.39 / theirs:,.0f} MB/s", fx(theirs / ours))
        T.note("remote rows: both servers run on 127.0.0.1 with --ZMQChannelsWebsocketConnection.limit_rate=False, "
               "as docs recommend; a real network adds its round trip to every cell and every llm_query.")

def machine() -> str:
    return facts(['ipykernel', 'jupyter_client', 'pyzmq', 'ipython', 'litellm'],
                 "Numbers are medians unless a row says p90; every baseline is measured in this same run.")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='skip the 1 GB context and use fewer repetitions')
    ap.add_argument('--no-http', action='store_true', help='skip the litellm/HTTP rows')
    ap.add_argument('--sandbox-only', action='store_true', help='only the sandbox and warm-pool rows')
    ap.add_argument('--remote-only', action='store_true', help='only the remote-kernel rows (a local jupyter server and kernel gateway)')
    a = ap.parse_args(argv)
    q = a.quick
    started = time.perf_counter()
    print(machine(), flush=True)
    T = Table()
    tmp = Path(tempfile.mkdtemp(prefix='rlm_nb-bench-'))
    try:
        if a.sandbox_only:
            bench_sandbox(T, 3 if q else 7, 100 if q else 300, 100 * MB if q else 1000 * MB, 1 if q else 3, tmp)
            return _print(T, started, q)
        if a.remote_only:
            bench_remote(T, 3 if q else 5, 100 if q else 300, 3 if q else 5, 100 * MB, tmp)
            return _print(T, started, q)
        bench_start(T, 3 if q else 5)
        bench_trivial(T, 100 if q else 300)
        bench_llm_query(T, 100 if q else 300, 0 if a.no_http else (20 if q else 60), 300 if q else 1000)
        bench_session(T, 4, 150 if q else 500)
        bench_batched(T, 3 if q else 5, not a.no_http)
        sizes = [100 * MB] if q else [100 * MB, 1000 * MB]
        bench_context(T, sizes, {100 * MB: 1 if q else 3, 1000 * MB: 3}, tmp)
        bench_sandbox(T, 3 if q else 7, 100 if q else 300, 100 * MB if q else 1000 * MB, 1 if q else 3, tmp)
        bench_remote(T, 3 if q else 5, 100 if q else 300, 3 if q else 5, 100 * MB, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _print(T, started, q)

def _print(T, started, q):
    print()
    print(T.render())
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s{', --quick' if q else ''})")
    return 0

if __name__ == '__main__':
    sys.exit(main())
