"""Benchmark of the timeline (rlm_nb.widget) on a large session, against the same measurements on a small one.

    python benchmarks/bench_widget.py [--quick] [--no-browser]

"A session with 50 iterations and 500 sub-calls must stay responsive." This script builds such a session
(synthetic but shaped like a real one) and a small one (3 iterations, 4 sub-calls), feeds each one's full event
sequence, in the order the real loop emits it, into a live `Timeline` with no kernel, and loads each one's static
`render_html` into headless Debian chromium (never a downloaded browser). It prints the machine facts, one markdown
table (measurement | 50 it / 500 sub-calls | small baseline | ratio | note) and numbered notes. Every baseline is
measured in the same run. See benchmarks/README.md, "Timeline at scale", for what each row means.

Host side, the Timeline gets the events A. back to back; B. at 25x real speed (50x with --quick), its own ticker
thread redrawing; C. back to back, with a redraw run whenever a virtual clock (the session at real speed, about
9 minutes) crosses a multiple of the 0.25 s interval; D. the same for one cell batching 500 prompts (250 with
--quick) against one batching 64. Browser side: load, open a folded card, open a sub-call, apply a live update.
"""
from __future__ import annotations
import argparse, contextlib, heapq, json, os, shutil, sys, tempfile, threading, time
from pathlib import Path

os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True') # never fetch litellm's price map from the internet

import ipywidgets
from rlm_nb.events import (Session, Iteration, CodeCell, SubCall, Usage, Final, EventStream, SessionStarted,
                           IterationStarted, ModelReplied, CellStarted, CellOutput, CellFinished, SubCallStarted,
                           SubCallFinished, IterationFinished, SessionEnded)
import rlm_nb.widget as W
from rlm_nb.widget import Timeline, render_html, _css

from report import KB, MB, pct, med, ft, fx, log, facts, Table as _Table
CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']

# ----------------------------------------------------------------------------------------------- helpers
def fb(b):
    "A byte count, readable."
    if b >= MB: return f"{b/MB:.2f} MB"
    if b >= KB: return f"{b/KB:.1f} kB"
    return f"{b:.0f} B"

def ratio(a, b): return a / b if b else float('nan')

class Table(_Table):
    "The timeline table: the big session against the small one, with a note."
    def __init__(self): super().__init__(('measurement', '50 it / 500 sub-calls', 'small baseline', 'ratio', 'note'))
    def add(self, what, big, small, ratio_, note=''): self.row(what, big, small, ratio_, note)


# ----------------------------------------------------------------------------------------------- the synthetic session
WORDS = ('charge invoice refund card ticket customer duplicate payment gateway retry timeout order account '
         'billing support merchant settlement capture auth webhook queue worker latency status region').split()

def text(seed: int, n: int, line=96) -> str:
    "Deterministic log-like text of exactly n characters."
    out, i = [], seed
    while sum(map(len, out)) < n:
        i = (i * 1103515245 + 12345) % 2**31
        w = ' '.join(WORDS[(i >> k) % len(WORDS)] for k in range(0, 24, 3))
        out.append(f"2024-03-{i % 28 + 1:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}Z svc-{i % 9} id={i:010d} {w}"[:line - 1] + '\n')
    return ''.join(out)[:n]

def prompt_of(sc_id: int) -> str:
    "A sub-call prompt of about 2,000 characters: an instruction and a chunk of the log."
    head = (f"You are reading chunk {sc_id} of a service log. List every support ticket in it that is about a "
            f"customer charged twice, with its id and the customer's words. Answer 'none' if there is none.\n\n")
    return head + text(sc_id, 2000 - len(head))

def answer_of(sc_id: int) -> str:
    "A sub-call answer of about 200 characters."
    tail = " Checked every line that mentions a charge, a refund or a retry of the payment gateway."
    if sc_id % 37 == 0:
        return (f"One: ticket T-{sc_id * 7919 % 100000:05d}, customer says 'I was charged twice for order "
                f"{sc_id * 31:06d}, please refund the duplicate'. Gateway log shows a retry after a timeout." + tail)[:200]
    return (f"none. The chunk has {sc_id % 5 + 1} tickets (login, refund status, address change); none mention a "
            f"duplicate charge. Payment retries at {sc_id % 24:02d}:{sc_id % 60:02d} succeeded once." + tail)[:200]

REASONING = ("I {verb} the {what}. {why} Next I will {next}, keeping the per-chunk answers in `found` so the final "
             "answer can cite ticket ids. **Plan:** {plan}")

def reply_of(n: int, cells: list) -> tuple:
    "(response, reasoning) of the root model's reply for iteration n."
    verbs = ('looked at', 'counted', 'split', 'queried', 'checked', 'merged')
    prose = REASONING.format(verb=verbs[n % 6], what=('log size and first lines', 'chunks', 'ticket lines')[n % 3],
                             why=f"Iteration {n}: the context is 5 MB, far too big to read at once.",
                             next=('ask the sub-model about each chunk', 'check the candidates', 'narrow the dates')[n % 3],
                             plan=f"chunks of 2,000 characters, {n % 4 + 1} at a time.")
    body = '\n\n'.join(f"```repl\n{c}\n```" for c in cells)
    return prose + '\n\n' + body, prose

def code_of(n: int, k: int, calls: int, batched: bool) -> str:
    lines = [f"# iteration {n}, block {k + 1}", "import re, collections",
             f"chunks = [context[i:i + 2000] for i in range(0, len(context), 2000)]",
             "print(len(chunks), 'chunks;', sum(map(len, chunks)), 'characters')"]
    if batched:
        lines += [f"answers = llm_query_batched([PROMPT.format(c) for c in chunks[{n * 10}:{n * 10 + calls}]])",
                  "found = [a for a in answers if not a.startswith('none')]", "print(len(found), 'hits')"]
    elif calls:
        lines += [f"for c in chunks[{n * 10}:{n * 10 + calls}]:", "    a = llm_query(PROMPT.format(c))",
                  "    if not a.startswith('none'): found.append(a)", "print(len(found), 'hits so far')"]
    else:
        lines += ["counts = collections.Counter(re.findall(r'svc-\\d', context))", "print(counts.most_common(5))"]
    return '\n'.join(lines)

def stream(text_: str, name='stdout') -> dict: return {'output_type': 'stream', 'name': name, 'text': text_}

ERROR_OUTPUT = {'output_type': 'error', 'ename': 'NameError', 'evalue': "name 'found' is not defined",
                'traceback': ['\x1b[0;31m---------------------------------------------------------------------------\x1b[0m',
                              '\x1b[0;31mNameError\x1b[0m                                 Traceback (most recent call last)',
                              'Cell \x1b[0;32mIn[7], line 6\x1b[0m\n\x1b[1;32m      5\x1b[0m a \x1b[38;5;241m=\x1b[39m llm_query(PROMPT\x1b[38;5;241m.\x1b[39mformat(c))\n\x1b[0;32m----> 6\x1b[0m \x1b[38;5;28;01mif\x1b[39;00m \x1b[38;5;129;01mnot\x1b[39;00m a\x1b[38;5;241m.\x1b[39mstartswith(\x1b[38;5;124m\'none\'\x1b[39m): found\x1b[38;5;241m.\x1b[39mappend(a)\n',
                              "\x1b[0;31mNameError\x1b[0m: name 'found' is not defined"]}

def plan(iterations: int, subcalls: int, batches: list) -> list:
    """Per iteration, a list of cells, each (sub-calls, batched?). The first iterations (3, or 1 of a short session)
    explore without sub-calls; the iterations in `batches` make one llm_query_batched of that size; the others share
    the remaining sub-calls, made one by one; the last iteration only calls FINAL_VAR. Every third iteration has a
    second cell that makes no sub-call."""
    rest = subcalls - sum(b for _, b in batches)
    bat = dict(batches)
    explore = min(3, max(1, iterations - 2))
    loops = [n for n in range(explore + 1, iterations) if n not in bat]
    assert loops or not rest, 'no iteration left for the sub-calls outside batches'
    per, extra = divmod(rest, len(loops)) if loops else (0, 0)
    out = []
    for n in range(1, iterations + 1):
        if n in bat: first = (bat[n], True)
        elif n in loops: first = (per + (loops.index(n) < extra), False)
        else: first = (0, False)
        cells = [first] + ([(0, False)] if n % 3 == 0 and n < iterations else [])
        out.append(cells)
    assert sum(c for cells in out for c, _ in cells) == subcalls, out
    return out

class Feed:
    """The event sequence of a synthetic session, in the order RLM emits it, mutating the Session objects exactly
    when the real loop does (core._iteration/_cell, bridge._record). Iterating yields (event, t): t is the event's
    time on a virtual clock, in seconds from the start, from the model's latency (2-6 s a reply), each sub-call's
    latency (0.6-1.2 s) and `concurrency` workers for a batch, as a real session would take."""
    def __init__(self, iterations=50, subcalls=500, batches=((10, 64), (25, 64), (40, 64)), error_at=7, concurrency=8):
        self.shape = plan(iterations, subcalls, list(batches))
        self.error_at, self.concurrency = error_at, concurrency
        self.iterations, self.subcalls = iterations, subcalls

    def __iter__(self):
        s = Session('Which customers were charged twice in March, and what did support tell them?', 'openai/gpt-4o',
                    'openai/gpt-4o-mini', inputs=[{'name': 'context', 'type': 'str', 'size': 5_000_000,
                                                   'summary': 'str of length 5,000,000'}])
        self.session, self.cell_spans = s, [] # (iteration, cell, sub-calls, batched, t start, t end)
        ids, batch_ids, now = iter(range(1, 10**9)), iter(range(1, 10**9)), 0.0
        yield SessionStarted(s), now
        last = len(self.shape)
        for n, cells in enumerate(self.shape, 1):
            yield IterationStarted(n), now
            codes = [code_of(n, k, c, b) for k, (c, b) in enumerate(cells)]
            if n == last: codes = ["answer = '\\n'.join(found)\nprint(answer[:300])\nFINAL_VAR('answer')"]
            response, reasoning = reply_of(n, codes)
            it = Iteration(n, response, reasoning, usage=Usage.of_call(1500 + 900 * n, 250, 0.004 + 0.002 * n),
                           latency=2.0 + n % 5)
            now += it.latency
            s.iterations.append(it)
            yield ModelReplied(it), now
            for k, code in enumerate(codes):
                calls, batched = cells[k] if n != last else (0, False)
                t_cell = now = now + 0.02
                yield CellStarted(n, k, code), now
                outputs, subs = [], []
                def out(o):
                    outputs.append(o)
                    return CellOutput(n, k, o)
                now += 0.1
                yield out(stream(f"{2500 + n} chunks; 5000000 characters\n")), now
                batch = next(batch_ids) if batched else None
                pending = [SubCall(next(ids), 'llm', '', 'openai/gpt-4o-mini', batch=batch, iteration=n, cell=k)
                           for _ in range(calls)]
                for sc in pending: sc.prompt, sc.latency = prompt_of(sc.id), 0.6 + sc.id % 7 / 10
                if batched: # `concurrency` workers; the next prompt starts as soon as a worker is free
                    queue, heap = list(pending), []
                    while queue and len(heap) < self.concurrency:
                        sc = queue.pop(0); heapq.heappush(heap, (now + sc.latency, sc.id, sc))
                        yield SubCallStarted(sc), now
                    while heap:
                        now, _, sc = heapq.heappop(heap)
                        self._answer(sc); subs.append(sc)
                        yield SubCallFinished(sc), now
                        if queue:
                            nxt = queue.pop(0); heapq.heappush(heap, (now + nxt.latency, nxt.id, nxt))
                            yield SubCallStarted(nxt), now
                else:
                    for i, sc in enumerate(pending):
                        yield SubCallStarted(sc), now
                        now += sc.latency
                        self._answer(sc); subs.append(sc)
                        yield SubCallFinished(sc), now
                        if i % 3 == 2: yield out(stream(f"{i + 1} chunks read, {i // 7} hits so far\n")), now
                error = n == self.error_at and k == 0
                now += 0.2
                if error: yield out(ERROR_OUTPUT), now
                elif n == last: yield out(stream("T-00259: 'I was charged twice for order 000259'…\n")), now
                else: yield out(stream(f"{sum(1 for x in subs if not x.response.startswith('none'))} hits\n"
                                       f"{text(n * 100 + k, 300)}")), now
                now += 0.01
                cell = CodeCell(n, k, code, outputs, ''.join(o.get('text', '') for o in outputs if 'text' in o),
                                'error' if error else 'ok', now - t_cell, n * 3 + k, sorted(subs, key=lambda x: x.id))
                it.cells.append(cell)
                self.cell_spans.append((n, k, len(subs), batched, t_cell, now))
                yield CellFinished(cell), now
            if n == last: it.final = Final("T-00259 and T-00777 were charged twice; support promised refunds.", 'FINAL_VAR', 'answer', 'str')
            it.feedback = f"[Iteration {n} done, {len(s.subcalls)} sub-calls so far. Continue, or finish with FINAL.]"
            yield IterationFinished(it), now
        s.final, s.stop_reason, s.ended = it.final, 'final', time.time()
        yield SessionEnded(s), now

    @staticmethod
    def _answer(sc): sc.response, sc.usage = answer_of(sc.id), Usage.of_call(520, 48, 0.0001)

def final_session(**kw) -> Session:
    f = Feed(**kw)
    for _ in f: pass
    return f.session

BIG = dict(iterations=50, subcalls=500, batches=((10, 64), (25, 64), (40, 64)), error_at=7)
SMALL = dict(iterations=3, subcalls=4, batches=(), error_at=2)

# ----------------------------------------------------------------------------------------------- host side: the Timeline
class Sent:
    """Records what ipywidgets sends to the front-end: every comm message of every widget, with its size as JSON.
    Without a kernel ipywidgets still builds and 'sends' each message (to a DummyComm); the JSON encoding a real
    kernel would do is done here too, so its cost is counted in the thread that pays it."""
    def __init__(self): self.msgs, self._lock, self._orig, self.biggest = [], threading.Lock(), None, (0, '')

    def __enter__(self):
        self._orig, orig, rec = ipywidgets.Widget._send, ipywidgets.Widget._send, self
        def _send(widget, msg, buffers=None):
            size = len(json.dumps(msg, separators=(',', ':')).encode())
            state = msg.get('state', {})
            with rec._lock:
                rec.msgs.append(('value' in state, size))
                if 'value' in state and size > rec.biggest[0]: rec.biggest = (size, state['value'])
            return orig(widget, msg, buffers)
        ipywidgets.Widget._send = _send
        return self

    def __exit__(self, *exc): ipywidgets.Widget._send = self._orig

@contextlib.contextmanager
def restore(obj, name, value):
    "Put obj.name back to `value` on exit."
    try: yield
    finally: setattr(obj, name, value)

def feed(kw, mode='fast', speedup=25.0, interval=0.25) -> dict:
    """Feed one session's events into a fresh Timeline subscribed to an EventStream, as RLM does, and measure.
    mode 'fast': events back to back. 'real': each event at its virtual time / speedup, the Timeline's own ticker
    redrawing every `interval` s. 'sim': events back to back, but a redraw (flush) is run whenever the virtual clock
    crosses a multiple of `interval`, exactly as the ticker would in a session running at real speed, and the
    session's elapsed time follows the virtual clock."""
    t = Timeline(interval=interval if mode != 'sim' else 10**6) # in 'sim' the ticker never fires
    flushes, orig_flush, sim = [], t.flush, {'tick': False, 'at': None}
    def flush(): # an instance attribute: the ticker and SessionEnded both call self.flush()
        tick, at = sim['tick'] or threading.current_thread() is t._ticker, sim['at']
        a, d, c0, w0 = len(sent.msgs), drawn[0], time.thread_time(), time.perf_counter()
        try: return orig_flush()
        finally:
            w, c = time.perf_counter() - w0, time.thread_time() - c0
            flushes.append(dict(tick=tick, at=at, wall=w, cpu=c, cards=drawn[0] - d, bytes=sum(sz for _, sz in sent.msgs[a:]),
                                values=sum(v for v, _ in sent.msgs[a:])))
    t.flush = flush
    drawn, orig_card = [0], W.card_html
    def card_html(*a, **k): # counted: how many cards each redraw draws
        drawn[0] += 1; return orig_card(*a, **k)
    W.card_html = card_html
    events = EventStream()
    events.subscribe(t)
    per, f, next_tick = [], Feed(**kw), interval
    with Sent() as sent, restore(W, 'card_html', orig_card):
        p0, c0 = time.perf_counter(), time.process_time()
        for e, vt in f:
            if mode == 'real':
                delay = p0 + vt / speedup - time.perf_counter()
                if delay > 0: time.sleep(delay)
            elif mode == 'sim' and not isinstance(e, SessionStarted):
                s = f.session
                while next_tick <= vt:
                    s.started = time.time() - next_tick
                    sim.update(tick=True, at=next_tick)
                    try: t.flush()
                    finally: sim.update(tick=False, at=None)
                    next_tick += interval
                s.started = time.time() - vt
                if isinstance(e, SessionEnded): s.ended = time.time()
            w, c = time.perf_counter(), time.thread_time()
            events.emit(e)
            per.append((e.type, time.perf_counter() - w, time.thread_time() - c))
        wall, cpu = time.perf_counter() - p0, time.process_time() - c0
        html_ = t.html
        t.close()
    ticks = [x for x in flushes if x['tick']]
    end = [x for x in flushes if not x['tick']]
    return dict(events=len(per), sub_wall=sum(w for _, w, _ in per), sub_cpu=sum(c for _, _, c in per),
                worst=max((w, ty, c) for ty, w, c in per if ty != 'session_ended'),
                end_wall=per[-1][1], end_cpu=per[-1][2], end_flush=end[-1] if end else None,
                ticks=ticks, tick_cpu=sum(x['cpu'] for x in ticks), feed_wall=wall, process_cpu=cpu,
                virtual=vt, n_msgs=len(sent.msgs), msg_bytes=sum(sz for _, sz in sent.msgs),
                n_values=sum(v for v, _ in sent.msgs), value_bytes=sum(sz for v, sz in sent.msgs if v),
                biggest=sent.biggest[1], html=html_, spans=f.cell_spans)

def bench_host(T: Table, reps: int, speedup: float, stress: int):
    big_s, small_s = final_session(**BIG), final_session(**SMALL)
    assert len(big_s.iterations) == 50 and len(big_s.subcalls) == 500, (len(big_s.iterations), len(big_s.subcalls))
    assert len(small_s.iterations) == 3 and len(small_s.subcalls) == 4
    out = {}

    def of(session):
        t = time.perf_counter(); tl = Timeline.of(session); dt = time.perf_counter() - t
        tl.close(); return dt
    # the baseline, the back-to-back feed and Timeline.of run interleaved, so that drift on the machine hits all alike
    log(f"render_html baseline, A. Timeline with events back to back, Timeline.of: {reps} rounds, interleaved")
    big_html, small_html = render_html(big_s), render_html(small_s) # warm: imports, the lexer
    feed(BIG); feed(SMALL); of(big_s); of(small_s)
    fast, rend, ofs = {'big': [], 'small': []}, {'big': [], 'small': []}, {'big': [], 'small': []}
    for _ in range(reps):
        for name, kw, session in (('big', BIG, big_s), ('small', SMALL, small_s)):
            t = time.perf_counter(); render_html(session); rend[name].append(time.perf_counter() - t)
            fast[name].append(feed(kw))
            ofs[name].append(of(session))
    rb, rs = med(rend['big']), med(rend['small'])
    nb, ns = len(big_html.encode()), len(small_html.encode())
    out.update(big_html=big_html, small_html=small_html)
    T.add("**baseline**: `render_html(session)` of the final session, time", ft(rb), ft(rs), fx(rb / rs),
          f"{len(big_s.cells)} vs {len(small_s.cells)} cells; one pygments highlight per cell is most of it")
    T.add("**baseline**: `render_html(session)`, size", fb(nb), fb(ns), fx(nb / ns), '')

    m = lambda name, k: med([r[k] for r in fast[name]])
    fb_, fs_ = fast['big'][0], fast['small'][0]
    assert 'Iteration 50' in fb_['html'] and 'final answer' in fb_['html'], 'the timeline did not draw the whole session'
    T.add("events fed to the Timeline", f"{fb_['events']:,}", f"{fs_['events']:,}", fx(fb_['events'] / fs_['events']),
          "the real loop's order: 2 per sub-call, 1 per output")
    pe = lambda name: (m(name, 'sub_cpu') - m(name, 'end_cpu')) / (fast[name][0]['events'] - 1)
    T.add("A. back to back: subscriber CPU per event, without SessionEnded", ft(pe('big')), ft(pe('small')),
          fx(pe('big') / pe('small')), 'an event only marks parts dirty; redraws happen later')
    wb, ws = med([r['worst'][0] for r in fast['big']]), med([r['worst'][0] for r in fast['small']])
    T.add("A. back to back: worst single event (wall), without SessionEnded", ft(wb), ft(ws), fx(wb / ws),
          f"limit 50 ms; worst of all runs {ft(max(r['worst'][0] for r in fast['big']))}")
    eb, es = m('big', 'end_wall'), m('small', 'end_wall')
    T.add("A. back to back: SessionEnded, whose flush draws all that is dirty", ft(eb), ft(es), fx(eb / es),
          f"limit 1 s; {fx(eb / rb)} one render_html: no redraw ran before it, so all 50 cards are drawn, most twice")
    T.note(f"A (back to back): the SessionEnded flush drew {fb_['end_flush']['cards']} cards for "
           f"{len(big_s.iterations)} iterations (small: {fs_['end_flush']['cards']} for {len(small_s.iterations)}).")
    T.add("A. back to back: widget value updates sent / bytes", f"{m('big', 'n_values'):.0f} / {fb(m('big', 'value_bytes'))}",
          f"{m('small', 'n_values'):.0f} / {fb(m('small', 'value_bytes'))}",
          fx(m('big', 'value_bytes') / m('small', 'value_bytes')), f"{fx(m('big', 'value_bytes') / nb)} render_html's size")
    T.note(f"A (back to back), {reps} runs of each: the whole feed took {ft(m('big', 'feed_wall'))} (small "
           f"{ft(m('small', 'feed_wall'))}), subscriber CPU in all {ft(m('big', 'sub_cpu'))} ({ft(m('small', 'sub_cpu'))}); "
           f"the ticker redrew {sorted(len(r['ticks']) for r in fast['big'])} times meanwhile; all comm messages (values, "
           f"the card box's children, ...): {m('big', 'n_msgs'):.0f}, {fb(m('big', 'msg_bytes'))}.")

    ob, os_ = med(ofs['big']), med(ofs['small'])
    T.add("`Timeline.of(session)`: a live timeline of a finished session", ft(ob), ft(os_), fx(ob / os_),
          f"limit 1 s; {fx(ob / rb)} one render_html")

    # ---- B. real time: the Timeline's own ticker thread
    log(f"B. Timeline, events at {speedup:g}x real speed, the ticker redrawing (one run each; "
        f"{fb_['virtual'] / speedup:.0f} s + {fs_['virtual'] / speedup:.1f} s)")
    pb, ps = feed(BIG, 'real', speedup), feed(SMALL, 'real', speedup)
    body = lambda h: h[h.index('<details class="rlm-card"'):] # all but the header, whose elapsed time differs
    assert body(pb['html']) == body(fb_['html']), 'the ticker-driven timeline ended with other cards than the back-to-back one'
    T.add(f"B. {speedup:g}x real speed: redraws by the ticker thread (every 0.25 s)", f"{len(pb['ticks'])}",
          f"{len(ps['ticks'])}", fx(ratio(len(pb['ticks']), len(ps['ticks']))),
          f"feed took {pb['feed_wall']:.1f} s vs {ps['feed_wall']:.2f} s (virtual {pb['virtual']:.0f} s vs {ps['virtual']:.0f} s)")
    cb, cs = pb['sub_cpu'] + pb['tick_cpu'], ps['sub_cpu'] + ps['tick_cpu']
    T.add(f"B. {speedup:g}x real speed: host CPU of the timeline, subscriber + redraws", ft(cb), ft(cs), fx(cb / cs),
          f"{cb / pb['feed_wall'] * 100:.1f}% vs {cs / ps['feed_wall'] * 100:.1f}% of one core")
    T.add(f"B. {speedup:g}x real speed: worst single event (wall, includes waiting for a redraw to release the lock)",
          ft(pb['worst'][0]), ft(ps['worst'][0]), fx(pb['worst'][0] / ps['worst'][0]),
          f"limit 50 ms; a {pb['worst'][1]}, {ft(pb['worst'][2])} of it CPU")
    wt = lambda r, k: max((x[k] for x in r['ticks']), default=float('nan'))
    T.add(f"B. {speedup:g}x real speed: slowest redraw, wall (CPU of the most expensive)", f"{ft(wt(pb, 'wall'))} ({ft(wt(pb, 'cpu'))})",
          f"{ft(wt(ps, 'wall'))} ({ft(wt(ps, 'cpu'))})", fx(ratio(wt(pb, 'wall'), wt(ps, 'wall'))),
          f"median redraw {ft(med([x['wall'] for x in pb['ticks']]))} vs {ft(med([x['wall'] for x in ps['ticks']]) if ps['ticks'] else float('nan'))}")
    T.add(f"B. {speedup:g}x real speed: SessionEnded", ft(pb['end_wall']), ft(ps['end_wall']), fx(pb['end_wall'] / ps['end_wall']),
          'limit 1 s; redraws only the last two cards, the header and the answer')
    T.note(f"B ({speedup:g}x real speed): the process used {ft(pb['process_cpu'])} CPU in all over the {pb['feed_wall']:.1f} s "
           f"feed (all threads, with the JSON sizing of each message). At this speed the ticker sees "
           f"{speedup * 0.25:g} s of session per redraw, so a redraw often has several finished cards to draw.")

    # ---- C. simulated real speed: redraws on the virtual clock
    log("C. Timeline, simulated real speed (a redraw every 0.25 s of virtual time)")
    sb, ss = feed(BIG, 'sim'), feed(SMALL, 'sim')
    assert body(sb['html']) == body(fb_['html']), 'the simulated-clock timeline ended with other cards than the others'
    out['live'] = {'big': sb['biggest'], 'small': ss['biggest']}
    T.add("C. real speed (simulated clock): session length / redraws", f"{sb['virtual'] / 60:.1f} min / {len(sb['ticks']):,}",
          f"{ss['virtual']:.0f} s / {len(ss['ticks'])}", fx(len(sb['ticks']) / len(ss['ticks'])),
          '2-6 s per model reply, 0.6-1.2 s per sub-call, batches on 8 workers')
    T.add("C. real speed: widget value updates sent / bytes, whole session", f"{sb['n_values']:,} / {fb(sb['value_bytes'])}",
          f"{ss['n_values']} / {fb(ss['value_bytes'])}", fx(sb['value_bytes'] / ss['value_bytes']),
          f"{fx(sb['value_bytes'] / nb)} render_html's size; {fb(sb['value_bytes'] / sb['virtual'])}/s on average")
    busy = [x for x in sb['ticks'] if x['bytes']]
    T.add("C. real speed: bytes per redraw that sent something, median / largest",
          f"{fb(med([x['bytes'] for x in busy]))} / {fb(max(x['bytes'] for x in busy))}",
          f"{fb(med([x['bytes'] for x in ss['ticks'] if x['bytes']]))} / {fb(max(x['bytes'] for x in ss['ticks']))}",
          fx(med([x['bytes'] for x in busy]) / med([x['bytes'] for x in ss['ticks'] if x['bytes']])),
          "the largest is the running card of a 64-prompt batch")
    cpu_b, cpu_s = sb['tick_cpu'] + sb['sub_cpu'], ss['tick_cpu'] + ss['sub_cpu']
    T.add("C. real speed: host CPU of the timeline over the session", ft(cpu_b), ft(cpu_s), fx(cpu_b / cpu_s),
          f"{cpu_b / sb['virtual'] * 100:.2f}% vs {cpu_s / ss['virtual'] * 100:.2f}% of one core")
    p99 = lambda r: pct([x['cpu'] for x in r['ticks']], .99)
    T.add("C. real speed: redraw CPU, p99 (= what an event can wait for the lock)", ft(p99(sb)), ft(p99(ss)),
          fx(p99(sb) / p99(ss)), f"limit 50 ms; median {ft(med([x['cpu'] for x in sb['ticks']]))} vs "
          f"{ft(med([x['cpu'] for x in ss['ticks']]))}")
    top = max(sb['ticks'], key=lambda x: x['cpu'])
    T.note(f"C (real speed): the most expensive redraw took {ft(top['cpu'])} CPU ({ft(top['wall'])} wall) at "
           f"{top['at']:.2f} s of the session; it drew {top['cards']} card(s) and sent {fb(top['bytes'])}.")
    # how the bytes of a running cell grow with its sub-calls (same run)
    seq, bat = _cell_bytes(sb, False), _cell_bytes(sb, True)
    if seq and bat:
        (n1, b1), (n2, b2) = seq[len(seq) // 2], bat[len(bat) // 2]
        T.note(f"C (real speed): bytes sent while a cell runs, median: a cell making {n1} sequential llm_query calls "
               f"{fb(b1)}, a cell batching {n2} prompts {fb(b2)} ({fx(b2 / b1)} for {fx(n2 / n1)} the sub-calls).")

    # ---- D. stress: one cell batching many prompts
    if stress:
        log(f"D. stress: one cell batching {stress} prompts vs 64, simulated real speed")
        kw = lambda n: dict(iterations=2, subcalls=n, batches=((1, n),), error_at=0)
        xb, x64 = feed(kw(stress), 'sim'), feed(kw(64), 'sim')
        out['live']['stress'], out['stress'] = xb['biggest'], stress
        (_, bb), = _cell_bytes(xb, True); (_, b64), = _cell_bytes(x64, True)
        T.add(f"D. one running cell batching {stress} prompts (baseline: 64): bytes sent while it runs", fb(bb), fb(b64),
              fx(bb / b64), f"{fx(stress / 64)} the sub-calls: the running card is redrawn whole, 4 times a second, "
              f"so the bytes grow with the square")
        sl = lambda r: max(x['cpu'] for x in r['ticks'])
        T.add(f"D. batching {stress} vs 64: most expensive redraw (CPU) = what an event can wait for the lock", ft(sl(xb)),
              ft(sl(x64)), fx(sl(xb) / sl(x64)), f"largest update {fb(max(x['bytes'] for x in xb['ticks']))} vs "
              f"{fb(max(x['bytes'] for x in x64['ticks']))}")
        cb_, c64 = xb['tick_cpu'], x64['tick_cpu']
        dur = lambda r: r['spans'][0][5] - r['spans'][0][4]
        T.add(f"D. batching {stress} vs 64: redraw CPU while the cell runs", ft(cb_), ft(c64), fx(cb_ / c64),
              f"{cb_ / dur(xb) * 100:.1f}% vs {c64 / dur(x64) * 100:.1f}% of one core; the cell runs "
              f"{dur(xb):.0f} s vs {dur(x64):.0f} s")
    return out

def _cell_bytes(r, batched) -> list:
    "[(sub-calls, bytes sent by redraws while it ran)] for the cells with sub-calls, batched or not (needs 'sim' mode)."
    out = []
    for n, k, calls, b, t0, t1 in r['spans']:
        if not calls or b != batched: continue
        out.append((calls, sum(x['bytes'] for x in r['ticks'] if t0 < x['at'] <= t1)))
    return sorted(out)

# ----------------------------------------------------------------------------------------------- browser side
FRAME = "() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"

TOGGLE_JS = """async ([sel, reps]) => {
  const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const el = document.querySelector(sel);
  if (!el) throw new Error('no element ' + sel);
  const summary = el.querySelector(':scope > summary');
  const sync = [], toFrame = [];
  for (let i = 0; i < reps; i++) {
    el.scrollIntoView({block: 'start'});
    await frame(); await frame();
    const t0 = performance.now();
    summary.click();                          // what a click on the summary does: toggles `open`
    void document.body.offsetHeight;          // style + layout, now
    const t1 = performance.now();
    await frame();                            // until the next frame has been produced
    const t2 = performance.now();
    if (!el.open) throw new Error('the click did not open ' + sel);
    sync.push(t1 - t0); toFrame.push(t2 - t0);
    el.open = false; void document.body.offsetHeight; await frame();
  }
  return [sync, toFrame];
}"""

INSERT_JS = """async ([html, reps, replace]) => {
  // replace: the host already shows this content and gets it again, as an HTML widget's view does on every update
  const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const host = document.getElementById('host');
  const sync = [], toFrame = [];
  for (let i = 0; i < reps; i++) {
    host.innerHTML = replace ? html : ''; void document.body.offsetHeight; await frame(); await frame();
    const t0 = performance.now();
    host.innerHTML = html;
    void document.body.offsetHeight;
    const t1 = performance.now();
    await frame();
    sync.push(t1 - t0); toFrame.push(performance.now() - t0);
  }
  return [sync, toFrame, document.getElementsByTagName('*').length];
}"""

NAV_JS = """() => new Promise(resolve => {
  // load event end, and first contentful paint (reported asynchronously: wait for it up to 2 s)
  const load = performance.getEntriesByType('navigation')[0].loadEventEnd;
  const done = (p) => resolve([load, p]);
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) if (e.name === 'first-contentful-paint') done(e.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 2000);
})"""

PAGE = "<!doctype html><html><head><meta charset='utf-8'><title>timeline</title></head><body>{}</body></html>"

def folded_card(session) -> str:
    "Selector of the folded card with the most sub-calls (render_html opens only the last card)."
    its = session.iterations[:-1]
    best = max(its, key=lambda it: (len(it.subcalls), -it.index))
    return f'details.rlm-card[data-iteration="{best.index}"]', len(best.subcalls)

def bench_browser(T: Table, host: dict, reps: int, tmp: Path):
    from playwright.sync_api import sync_playwright
    if not CHROMIUM.exists():
        T.note(f"browser rows skipped: {CHROMIUM} is missing (apt-get install chromium; no browser is ever downloaded).")
        return
    big_s, small_s = final_session(**BIG), final_session(**SMALL)
    pages = {}
    for name, h in (('big', host['big_html']), ('small', host['small_html'])):
        p = tmp / f'{name}.html'; p.write_text(PAGE.format(h), encoding='utf-8'); pages[name] = p
    profile = tmp / 'chromium-profile'
    log(f"browser: headless {CHROMIUM} ({reps} reps of each measurement)")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                    args=CHROMIUM_ARGS, viewport={'width': 1280, 'height': 900})
        try:
            page = ctx.new_page()
            version = ctx.browser.version if ctx.browser else page.evaluate("navigator.userAgent")
            res = {}
            for name in ('big', 'small'):
                url = pages[name].as_uri()
                page.goto(url); page.evaluate(FRAME) # warm: the first navigation starts renderer caches
                loads, fcp, lev = [], [], []
                for _ in range(reps):
                    t = time.perf_counter()
                    page.goto(url, wait_until='load')
                    page.evaluate(FRAME)
                    loads.append(time.perf_counter() - t)
                    nav = page.evaluate(NAV_JS)
                    lev.append(nav[0] / 1e3)
                    if nav[1] is not None: fcp.append(nav[1] / 1e3)
                nodes = page.evaluate("document.getElementsByTagName('*').length")
                res[name] = dict(load=med(loads), lev=med(lev), fcp=med(fcp) if fcp else float('nan'), nodes=nodes)
            for name, s, h in (('big', big_s, host['big_html']), ('small', small_s, host['small_html'])):
                page.set_content("<!doctype html><html><head><meta charset='utf-8'></head><body><div id='host'></div></body></html>")
                sync, frame, _ = page.evaluate(INSERT_JS, [h, reps, False])
                res[name].update(ins_sync=med(sync) / 1e3, ins_frame=med(frame) / 1e3)
                page.goto(pages[name].as_uri(), wait_until='load')
                sel, nsub = folded_card(s)
                sync, frame = page.evaluate(TOGGLE_JS, [sel, reps])
                res[name].update(card_sync=med(sync) / 1e3, card_frame=med(frame) / 1e3, card_subs=nsub,
                                 card_worst=max(frame) / 1e3)
                page.evaluate(f"document.querySelector({json.dumps(sel)}).open = true")
                sub_sel = f'{sel} details.rlm-subcall'
                sync, frame = page.evaluate(TOGGLE_JS, [sub_sel, reps])
                res[name].update(sub_sync=med(sync) / 1e3, sub_frame=med(frame) / 1e3)
            # one live redraw, as ipywidgets' HTML view applies it: the card widget's innerHTML = the new value
            page.set_content(f"<!doctype html><html><head><meta charset='utf-8'></head><body><div class='rlm-timeline'>"
                             f"{_css()}<div id='host'></div></div></body></html>")
            for name, h in host['live'].items():
                sync, frame, _ = page.evaluate(INSERT_JS, [h, reps, True])
                res.setdefault(name, {}).update(live_sync=med(sync) / 1e3, live_frame=med(frame) / 1e3, live_bytes=len(h.encode()))
            # what a live update does to a sub-call the user opened in the running card
            reopened = page.evaluate("""(html) => { const host = document.getElementById('host');
                host.innerHTML = html; const d = () => host.querySelector('details.rlm-subcall');
                d().open = true; const before = d().open; host.innerHTML = html; return [before, d().open]; }""",
                                     host['live']['big'])
        finally:
            ctx.close()
    b, s = res['big'], res['small']
    T.add("browser: open the static HTML file, navigation → load event", ft(b['lev']), ft(s['lev']), fx(b['lev'] / s['lev']),
          f"first contentful paint {ft(b['fcp'])} vs {ft(s['fcp'])}; {b['nodes']:,} vs {s['nodes']:,} DOM elements")
    T.add("browser: same, page.goto until the first frame after load (wall, host side)", ft(b['load']), ft(s['load']),
          fx(b['load'] / s['load']), 'includes playwright round trips')
    T.add("browser: insert the whole `render_html` with innerHTML, parse + style + layout", ft(b['ins_sync']),
          ft(s['ins_sync']), fx(b['ins_sync'] / s['ins_sync']),
          f"until the next frame {ft(b['ins_frame'])} vs {ft(s['ins_frame'])}; what a notebook front-end does with a saved output")
    T.add(f"browser: click a folded card's summary → open, style + layout", ft(b['card_sync']), ft(s['card_sync']),
          fx(b['card_sync'] / s['card_sync']),
          f"until the next frame {ft(b['card_frame'])} vs {ft(s['card_frame'])}; the card with the most sub-calls ({b['card_subs']} vs {s['card_subs']})")
    T.add("browser: click a sub-call's summary → open, style + layout", ft(b['sub_sync']), ft(s['sub_sync']),
          fx(b['sub_sync'] / s['sub_sync']), f"until the next frame {ft(b['sub_frame'])} vs {ft(s['sub_frame'])}")
    T.add("browser: apply the largest live update (innerHTML of the running card, as the HTML widget does)",
          ft(b['live_sync']), ft(s['live_sync']), fx(b['live_sync'] / s['live_sync']),
          f"{fb(b['live_bytes'])} vs {fb(s['live_bytes'])}; until the next frame {ft(b['live_frame'])} vs {ft(s['live_frame'])}; "
          "repeated at every redraw while that cell runs")
    T.note(f"Browser, live update: a sub-call the user opened in the running card is {'closed' if reopened == [True, False] else f'not closed ({reopened})'} "
           f"by the next update of that card, because the HTML widget's view replaces its innerHTML.")
    if 'stress' in res:
        x = res['stress']
        T.add(f"browser: same, the running card of a cell batching {host['stress']} prompts (baseline: 64)",
              ft(x['live_sync']), ft(b['live_sync']), fx(x['live_sync'] / b['live_sync']),
              f"{fb(x['live_bytes'])} vs {fb(b['live_bytes'])}; until the next frame {ft(x['live_frame'])} vs {ft(b['live_frame'])}")
    T.note(f"Browser: {version}, headless, fresh profile, viewport 1280×900. 'Until the next frame' waits for a "
           f"requestAnimationFrame and a task after it, so it includes up to one 16.7 ms frame interval of waiting; the "
           f"style + layout figure is the work itself (forced with offsetHeight right after the change). Medians of {reps}.")

# ----------------------------------------------------------------------------------------------- main
def machine() -> str:
    return facts(['ipywidgets', 'pygments', 'markdown-it-py', 'playwright'],
                 "Numbers are medians unless a row says otherwise; every baseline is measured in this same run.")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer repetitions, smaller stress case')
    ap.add_argument('--no-browser', action='store_true', help='skip the chromium rows')
    a = ap.parse_args(argv)
    q = a.quick
    started = time.perf_counter()
    print(machine(), flush=True)
    T = Table()
    tmp = Path(tempfile.mkdtemp(prefix='rlm_nb-bench-widget-'))
    try:
        host = bench_host(T, 5 if q else 15, 50 if q else 25, 250 if q else 500)
        if not a.no_browser: bench_browser(T, host, 5 if q else 15, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(T.render())
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s{', --quick' if q else ''})")
    return 0

if __name__ == '__main__':
    sys.exit(main())
