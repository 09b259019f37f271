"""What the benchmarks share: statistics, readable units, the markdown table they print, and the machine facts."""
import math, os, platform, statistics, subprocess, sys, time
from importlib.metadata import version as _version
from pathlib import Path
import psutil

KB, MB = 1_000, 1_000_000

def pct(xs, q):
    "The q-quantile (0..1) of xs, linear interpolation."
    s = sorted(xs)
    if not s: return float('nan')
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)

def med(xs): return statistics.median(xs)

def ft(s):
    "A duration, readable."
    if s != s: return 'n/a'
    a = abs(s)
    if a < 1e-3: return f"{s*1e6:.1f} µs"
    if a < 1: return f"{s*1e3:.2f} ms"
    return f"{s:.2f} s"

def fx(r): return 'n/a' if r != r else f"{r:,.0f}x" if r >= 100 else f"{r:.2f}x"

def log(msg): print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

class Table:
    "Rows of a markdown table, echoed to stderr as they come, and numbered notes under it."
    def __init__(self, head:tuple): self.head, self.rows, self.notes = head, [], []

    def row(self, *cells):
        self.rows.append(cells)
        print(f"  [{len(self.rows):2d}] {cells[0]}: {cells[1]} vs {cells[2]} ({cells[3]})", file=sys.stderr, flush=True)

    def note(self, s): self.notes.append(s)

    def render(self) -> str:
        w = [max(len(str(r[i])) for r in [self.head, *self.rows]) for i in range(len(self.head))]
        line = lambda r: '| ' + ' | '.join(str(c).ljust(w[i]) for i, c in enumerate(r)) + ' |'
        out = [line(self.head), '|' + '|'.join('-' * (x + 2) for x in w) + '|', *map(line, self.rows)]
        if self.notes: out += ['', 'Notes:'] + [f"{i}. {n}" for i, n in enumerate(self.notes, 1)]
        return '\n'.join(out)

def facts(packages:list, numbers:str) -> str:
    "The machine, the versions of `packages`, and the commit measured."
    def v(p):
        try: return _version(p)
        except Exception: return '?'
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(['git', '-C', str(root), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(root), 'status', '--porcelain', '--', 'rlm_nb'], capture_output=True, text=True).stdout.strip()
        head = f" (git {head}{', rlm_nb/ modified' if dirty else ''})" if head else ''
    except Exception: head = ''
    aff = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return (f"machine: {os.cpu_count()} CPUs ({aff} usable), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
            f"{platform.platform()}\npython {platform.python_version()}; " + ', '.join(f"{p} {v(p)}" for p in packages) +
            f", rlm_nb {v('rlm_nb')}{head}\n{numbers}")
