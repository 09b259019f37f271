"""The timeline without a browser: `render_html` and the live `Timeline` on sessions of real scripted runs.

Every session here is a real RLM run: a real kernel, and a real HTTP path to a ScriptedServer. The HTML is parsed with
the standard library's html.parser into a small tree (lxml is not installed), and the DOM contract of
/work/contract/API.md is checked on that tree."""
import threading, time
from html.parser import HTMLParser
import pytest
from rlm_nb.events import Session, SessionStarted
from rlm_nb.testing import ScriptedServer
from rlm_nb.widget import render_html, Timeline
from helpers import repl, script, rlm, is_root, is_fallback, turn

pytestmark = pytest.mark.timeout(240)


# ---------------------------------------------------------------------------------------------------------------
# A small, strict DOM built with html.parser

VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr'}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def __repr__(self): return f"<{self.tag} {self.attrs}>"

    @property
    def classes(self): return (self.attrs.get('class') or '').split()

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node): yield from c.iter()

    def all(self, tag=None, cls=None, **attrs) -> list:
        "Descendants (not self) matching a tag, a class and attribute values (`name=True`: present; `-` for `_`)."
        out = []
        for n in self.iter():
            if n is self or (tag and n.tag != tag) or (cls and cls not in n.classes): continue
            ok = True
            for k, v in attrs.items():
                k = k.replace('_', '-')
                if v is True: ok &= k in n.attrs
                else: ok &= n.attrs.get(k, object()) == v
            if ok: out.append(n)
        return out

    def one(self, tag=None, cls=None, **attrs):
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one {tag or ''}.{cls or ''}{attrs}, found {len(found)}: {found}"
        return found[0]

    @property
    def text(self) -> str:
        return ''.join(c if isinstance(c, str) else c.text for c in self.children)


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node('#root', {})
        self.stack, self.errors = [self.root], []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID: self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs), self.stack[-1]))

    def handle_endtag(self, tag):
        if tag in VOID: return
        if self.stack[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            while len(self.stack) > 1 and self.stack[-1].tag != tag: self.stack.pop()
        if len(self.stack) > 1: self.stack.pop()

    def handle_data(self, data): self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    "The HTML as a tree; it must be well formed (every element closed, in order)."
    b = _Builder()
    b.feed(html); b.close()
    assert not b.errors, f"malformed HTML: {b.errors[:5]}"
    assert len(b.stack) == 1, f"unclosed elements: {b.stack[1:]}"
    return b.root


def stats(dom: Node) -> dict:
    return {n.attrs['data-stat']: n.attrs.get('data-value') for n in dom.all('span', 'rlm-stat')}


def cards(dom: Node) -> list:
    return dom.all('details', 'rlm-card')


class RecordingServer(ScriptedServer):
    "A ScriptedServer that also keeps every (request body, response payload) it served, usage included."
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.served = []

    def _answer(self, body, headers):
        status, payload = super()._answer(body, headers)
        if status == 200:
            with self._lock: self.served.append((body, payload))
        return status, payload

    def reported_tokens(self, root: bool) -> int:
        return sum(p['usage']['total_tokens'] for b, p in self.served if is_root(b) == root)


# ---------------------------------------------------------------------------------------------------------------
# Shared sessions

XSS_REPLY = '<script>alert(1)</script>'
XSS_PRINT = '<img src=x onerror=alert(1)>'
XSS_SUB = '<script>alert(2)</script>'
XSS_HTML = '<b onclick=x>hi</b>'
QUESTION = 'Greet me <script>alert(3)</script> please'

TURN_1 = (f"Let me **look** first. {XSS_REPLY}\n" +
          repl(f"""
              import sys
              print('hello from stdout')
              print('careful now', file=sys.stderr)
              a = llm_query('Say hi to me')
              b = llm_query('Say hi to me')
              print({XSS_PRINT!r})
          """) + "\nNow some rich output.\n" +
          repl(f"""
              from IPython.display import HTML, display
              display(HTML({XSS_HTML!r}))
          """) + "\nAnd a mistake.\n" + repl("1/0"))
TURN_2 = "The sub-model greeted.\n" + repl("FINAL(a)")
SUB_ANSWER = f'hi there {XSS_SUB}'


@pytest.fixture(scope='module')
def rich():
    "Two iterations: stdout, stderr, two identical sub-calls (the second cached), a display, an error, then FINAL."
    srv = RecordingServer(script([TURN_1, TURN_2], sub=lambda p: SUB_ANSWER)).start()
    try: res = rlm(srv)(QUESTION, context='some context')
    finally: srv.stop()
    assert res.stop_reason == 'final', res
    return res, srv, render_html(res.session)


@pytest.fixture(scope='module')
def budget():
    "A session stopped by max_iterations=1, answered by the fallback."
    def root(body):
        if is_fallback(body): return "From what I saw:\nFINAL(about 3 lines)"
        return repl(f"print('still looking {turn(body)}')")
    srv = ScriptedServer(script(root)).start()
    try: res = rlm(srv, max_iterations=1)("How many lines?", context='a\nb\nc')
    finally: srv.stop()
    return res, render_html(res.session)


# ---------------------------------------------------------------------------------------------------------------
# render_html: the DOM contract

def test_static_html_has_one_card_per_iteration_and_only_the_newest_is_open(rich):
    res, srv, html = rich
    dom = parse(html)
    root = dom.one('div', 'rlm-timeline')
    assert root.parent is dom, "div.rlm-timeline is not the root element"
    assert root.attrs.get('data-status') == 'final'
    cs = cards(root)
    assert [c.attrs.get('data-iteration') for c in cs] == ['1', '2']
    assert [c.attrs.get('data-kind') for c in cs] == ['turn', 'turn']
    assert ['open' in c.attrs for c in cs] == [False, True]
    assert root.one(cls='rlm-header')
    assert 'openai/root' in root.one(cls='rlm-model').text
    assert 'openai/sub' in root.one(cls='rlm-sub-model').text
    reasoning = cs[0].one(cls='rlm-reasoning')
    assert 'Let me' in reasoning.text and [s.text for s in reasoning.all('strong')] == ['look']  # markdown rendered


def test_static_html_cells_have_status_code_and_classified_outputs(rich):
    res, srv, html = rich
    c1, c2 = cards(parse(html))
    cells1 = c1.all('div', 'rlm-cell')
    assert [(c.attrs.get('data-index'), c.attrs.get('data-status')) for c in cells1] == [('0', 'ok'), ('1', 'ok'), ('2', 'error')]
    assert [(c.attrs.get('data-index'), c.attrs.get('data-status')) for c in c2.all('div', 'rlm-cell')] == [('0', 'ok')]
    first, rich_cell, failing = cells1
    assert "llm_query" in first.one('pre', 'rlm-code').text
    out = first.one(cls='rlm-output')
    assert 'hello from stdout' in ''.join(n.text for n in out.all(cls='rlm-stdout'))
    assert 'careful now' in ''.join(n.text for n in out.all(cls='rlm-stderr'))
    assert 'careful now' not in ''.join(n.text for n in out.all(cls='rlm-stdout'))
    assert rich_cell.one(cls='rlm-output').all(cls='rlm-display'), 'the display output has no .rlm-display'
    err = failing.one(cls='rlm-output').one(cls='rlm-error')
    assert 'ZeroDivisionError' in err.text and '\x1b[' not in err.text  # the traceback, without ANSI colours


def test_static_html_subcalls_show_kind_cache_prompt_and_response(rich):
    res, srv, html = rich
    c1, c2 = cards(parse(html))
    subs = c1.all('details', 'rlm-subcall')
    assert [(s.attrs.get('data-kind'), s.attrs.get('data-cached')) for s in subs] == [('llm', 'false'), ('llm', 'true')]
    for s in subs:
        assert s.one(cls='rlm-prompt').text == 'Say hi to me'
        assert s.one(cls='rlm-response').text == SUB_ANSWER
    assert not c2.all('details', 'rlm-subcall')
    assert len([b for b, p in srv.served if not is_root(b)]) == 1  # the second call really was answered from the cache


def test_static_html_header_stats_hold_raw_numbers(rich):
    res, srv, html = rich
    st = stats(parse(html))
    assert set(st) == {'status', 'iterations', 'subcalls', 'root-tokens', 'sub-tokens', 'cost', 'elapsed'}
    assert st['status'] == 'final'
    assert st['iterations'] == '2'
    assert st['subcalls'] == '2'
    assert int(st['root-tokens']) == srv.reported_tokens(root=True) > 0
    assert int(st['sub-tokens']) == srv.reported_tokens(root=False) > 0  # the cached call cost nothing
    assert st['cost'] == ''  # no price for these local models: unknown, never 0
    assert float(st['elapsed']) == pytest.approx(res.elapsed, abs=0.1)


def test_static_html_final_panel(rich):
    res, srv, html = rich
    dom = parse(html)
    final = dom.one(cls='rlm-final')
    assert final.attrs.get('data-stop-reason') == 'final'
    assert final.one(cls='rlm-answer').text == SUB_ANSWER == res.answer
    assert not dom.all(cls='rlm-why')


def test_budget_stop_shows_the_reason_and_the_best_effort_notice(budget):
    res, html = budget
    assert res.stop_reason == 'max_iterations'
    dom = parse(html)
    assert dom.one('div', 'rlm-timeline').attrs.get('data-status') == 'max_iterations'
    assert dom.one(cls='rlm-header').attrs.get('data-status') == 'max_iterations'
    assert stats(dom)['status'] == 'max_iterations' and stats(dom)['iterations'] == '1'
    cs = cards(dom)
    assert [(c.attrs.get('data-iteration'), c.attrs.get('data-kind'), 'open' in c.attrs) for c in cs] == \
           [('1', 'turn', False), ('2', 'fallback', True)]
    final = dom.one(cls='rlm-final')
    assert final.attrs.get('data-stop-reason') == 'max_iterations'
    why = final.one(cls='rlm-why').text
    assert 'max_iterations' in why and 'best-effort' in why
    assert final.one(cls='rlm-answer').text == 'about 3 lines'


# ---------------------------------------------------------------------------------------------------------------
# Untrusted content is escaped

def test_model_output_and_printed_markup_never_appear_unescaped(rich):
    res, srv, html = rich
    for raw in (XSS_REPLY, XSS_PRINT, XSS_SUB, XSS_HTML, '<script', '<img src=x'):
        assert raw not in html, f"{raw!r} appears unescaped in the HTML"
    dom = parse(html)
    assert not dom.all('script'), 'a <script> element made it into the DOM'
    handlers = [(n.tag, k) for n in dom.iter() for k in n.attrs if k.startswith('on')]
    assert not handlers, f"event-handler attributes in the DOM: {handlers}"
    assert not [n for n in dom.all('img') if n.attrs.get('src') == 'x']
    # ...and the text is still there, as text
    assert XSS_REPLY in cards(dom)[0].one(cls='rlm-reasoning').text
    assert XSS_PRINT in ''.join(n.text for n in dom.all(cls='rlm-stdout'))
    assert 'alert(3)' in dom.one(cls='rlm-question').text


def test_html_display_output_is_only_inside_a_sandboxed_iframe(rich):
    res, srv, html = rich
    dom = parse(html)
    display = cards(dom)[0].all('div', 'rlm-cell')[1].one(cls='rlm-display')
    frame = display.one('iframe')
    assert 'sandbox' in frame.attrs and not frame.attrs['sandbox'], \
        f"the iframe must be fully sandboxed (no allow-scripts), sandbox={frame.attrs.get('sandbox')!r}"
    assert XSS_HTML in frame.attrs.get('srcdoc', '')  # it arrives escaped in the attribute, whole after unescaping
    assert not dom.all('b', onclick=True)
    assert [n for n in dom.iter() if 'srcdoc' in n.attrs] == [frame]


# Kernel code controls every field of the display data it publishes, and the name it passes to FINAL_VAR
PNG_BREAKOUT = 'iVBORw0KGgo"onerror="alert(1)'  # no whitespace: survives the base64 clean-up
MARKDOWN = 'md <script>alert(4)</script> [link](javascript:alert(5))'
SVG = '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(6)"></svg>'
VAR_NAME = '<img src=x onerror=alert(7)>'


@pytest.fixture(scope='module')
def hostile():
    "A session whose code publishes crafted display data and finishes with FINAL_VAR of a variable named with markup."
    code = repl(f"""
        from IPython.display import display
        display({{'image/png': {PNG_BREAKOUT!r}, 'text/plain': 'png'}}, raw=True)
        display({{'text/markdown': {MARKDOWN!r}, 'text/plain': 'md'}}, raw=True)
        display({{'image/svg+xml': {SVG!r}, 'text/plain': 'svg'}}, raw=True)
        globals()[{VAR_NAME!r}] = 'sneaky answer'
        FINAL_VAR({VAR_NAME!r})
    """)
    srv = ScriptedServer(script(["See [this](javascript:alert(8)).\n" + code])).start()
    try: res = rlm(srv)("Show me things", context='c')
    finally: srv.stop()
    assert res.stop_reason == 'final' and res.answer == 'sneaky answer', res
    return res, render_html(res.session)


def displays(html: str) -> list:
    return [d for c in parse(html).all('div', 'rlm-cell') for d in c.all(cls='rlm-display')]


def handlers(node: Node) -> list:
    return [(n.tag, k, v) for n in node.iter() for k, v in n.attrs.items() if k.startswith('on')]


def test_crafted_image_display_data_cannot_break_out_of_the_img_tag(hostile):
    res, html = hostile
    png = displays(html)[0]
    assert [o['data']['image/png'] for o in res.session.cells[0].outputs if 'image/png' in o.get('data', {})] == [PNG_BREAKOUT]
    assert not handlers(png), f"display data injected an event handler into the timeline: {handlers(png)}"
    assert not png.all('img'), 'data that is not base64 must not become an <img>'  # it is shown as its text/plain instead


def test_markdown_and_svg_display_data_are_inert(hostile):
    res, html = hostile
    md, svg = displays(html)[1:3]
    assert not md.all('script') and not handlers(md) and 'alert(4)' in md.text
    assert not [a for n in md.iter() for a in n.attrs.values() if a and a.strip().lower().startswith('javascript:')]
    assert not svg.all('svg') and svg.one('img').attrs['src'].startswith('data:image/svg+xml;base64,')
    reasoning = parse(html).one(cls='rlm-reasoning')
    assert not [a for n in reasoning.iter() for a in n.attrs.values() if a and a.strip().lower().startswith('javascript:')]


def test_final_var_name_is_escaped(hostile):
    res, html = hostile
    assert res.session.final.source == 'FINAL_VAR' and res.session.final.var == VAR_NAME
    assert VAR_NAME not in html, 'the FINAL_VAR variable name appears unescaped in the HTML'
    final = parse(html).one(cls='rlm-final')
    assert not final.all('img') and not handlers(final)
    assert VAR_NAME in final.text


# ---------------------------------------------------------------------------------------------------------------
# The live Timeline

def contract(dom: Node) -> dict:
    "What the DOM contract says about a timeline, for comparing two renderings."
    final = dom.all(cls='rlm-final')
    st = stats(dom)
    st.pop('elapsed', None)
    return {'status': dom.one(cls='rlm-header').attrs.get('data-status'), 'stats': st,
            'cards': [(c.attrs.get('data-iteration'), c.attrs.get('data-kind'), 'open' in c.attrs,
                       [(x.attrs.get('data-index'), x.attrs.get('data-status')) for x in c.all('div', 'rlm-cell')],
                       [(s.attrs.get('data-kind'), s.attrs.get('data-cached')) for s in c.all('details', 'rlm-subcall')])
                      for c in cards(dom)],
            'final': [(f.attrs.get('data-stop-reason'), f.one(cls='rlm-answer').text) for f in final]}


def timeline_threads(): return [t for t in threading.enumerate() if t.name == 'rlm_nb-timeline' and t.is_alive()]


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline: time.sleep(0.05)
    return pred()


def test_live_timeline_shows_iteration_one_while_the_run_is_in_progress():
    gate_reached, gate_open, done = threading.Event(), threading.Event(), threading.Event()
    def root(body):
        if turn(body) == 1:
            return "Let me ask.\n" + repl("colour = llm_query('What colour is the sky?')\nprint('got', colour)")
        gate_reached.set()
        gate_open.wait(90)  # the second root call is slow: held until the poller has seen iteration 1
        return "It is blue.\n" + repl("FINAL(colour)")
    srv = ScriptedServer(script(root, sub=lambda p: 'blue')).start()
    r = rlm(srv)
    t = Timeline(interval=0.05)
    t.attach(r)
    seen = {}

    def poll():
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not done.is_set():
                html = t.html
                try: dom = parse(html)
                except AssertionError: dom = None
                if dom is not None and gate_reached.is_set():
                    c1 = [c for c in cards(dom) if c.attrs.get('data-iteration') == '1']
                    if c1 and [s for s in c1[0].all('details', 'rlm-subcall') if 'blue' in s.text]:
                        seen.update(html=html, run_done=done.is_set())
                        return
                time.sleep(0.02)
        finally: gate_open.set()
    poller = threading.Thread(target=poll, name='test-poller', daemon=True)
    poller.start()
    try:
        res = r("What colour is the sky?", context='sky report')
    finally:
        done.set(); gate_open.set(); srv.stop()
    poller.join(10)

    assert seen, "the iteration-1 card with its sub-call never appeared in t.html while the run was in progress"
    assert seen['run_done'] is False
    live = parse(seen['html'])
    assert live.one(cls='rlm-header').attrs.get('data-status') == 'running'
    st = stats(live)
    assert st['status'] == 'running' and st['iterations'] == '1' and st['subcalls'] == '1'
    c1 = live.one('details', 'rlm-card', data_iteration='1')
    assert 'open' in c1.attrs
    sc = c1.one('details', 'rlm-subcall')
    assert sc.attrs.get('data-kind') == 'llm' and sc.one(cls='rlm-response').text == 'blue'
    assert "What colour is the sky?" in sc.one(cls='rlm-prompt').text
    assert not live.all(cls='rlm-final'), 'a final answer was shown while the run was still going'

    # after the run: the final state, the same as the static rendering
    assert res.stop_reason == 'final' and res.answer == 'blue'
    end = parse(t.html)
    assert end.one(cls='rlm-header').attrs.get('data-status') == 'final'
    assert stats(end)['status'] == 'final'
    assert end.one(cls='rlm-final').attrs.get('data-stop-reason') == 'final'
    assert end.one(cls='rlm-answer').text == 'blue'
    assert [(c.attrs.get('data-iteration'), 'open' in c.attrs) for c in cards(end)] == [('1', False), ('2', True)]
    assert contract(end) == contract(parse(render_html(res.session)))
    t.close()
    assert wait_for(lambda: not timeline_threads()), f"timeline threads left after close(): {timeline_threads()}"


def test_close_stops_the_redraw_thread_of_a_running_timeline():
    t = Timeline(interval=0.05)
    t(SessionStarted(Session('q', 'openai/root', 'openai/sub')))  # a session that never ends
    assert t._ticker is not None and wait_for(lambda: t._ticker.is_alive(), 1)
    assert t._ticker in timeline_threads()
    t.close()
    assert wait_for(lambda: not t._ticker.is_alive()), 'close() did not stop the redraw thread'
    assert t._ticker not in timeline_threads()


def test_timeline_of_a_finished_session_renders_it(rich):
    res, srv, html = rich
    t = Timeline.of(res.session)
    try:
        assert t.session is res.session
        dom = parse(t.html)
        assert contract(dom) == contract(parse(html))
        assert dom.one(cls='rlm-answer').text == SUB_ANSWER
        assert 'rlm-timeline' in t.widget._dom_classes
        bundle = t._repr_mimebundle_()
        assert 'application/vnd.jupyter.widget-view+json' in (bundle[0] if isinstance(bundle, tuple) else bundle)
    finally: t.close()
    assert wait_for(lambda: not timeline_threads())


# ---------------------------------------------------------------------------------------------------------------
# Found in review: each of these failed before its fix

def test_odd_display_data_cannot_crash_the_run_the_html_or_the_live_timeline():
    code = repl("""
        from IPython.display import publish_display_data
        publish_display_data({'text/plain': 5})
        publish_display_data({'image/png': ['iVBORw0KGgo=']})
        publish_display_data({'text/markdown': ['# odd ', 'heading']})
        print('shown')
    """)
    srv = ScriptedServer(script(["Show things.\n" + code, "Done.\n" + repl("FINAL('ok')")])).start()
    r = rlm(srv)
    t = Timeline(interval=0.05).attach(r)
    try:
        try: res = r("Show odd things", context='c')
        finally: srv.stop()
        assert res.stop_reason == 'final' and res.answer == 'ok'
        cell = res.session.cells[0]
        assert cell.status == 'ok' and '5\n' in cell.text and 'shown' in cell.text
        assert [o['data'] for o in cell.outputs if o['output_type'] == 'display_data'] == \
               [{'text/plain': 5}, {'image/png': ['iVBORw0KGgo=']}, {'text/markdown': ['# odd ', 'heading']}]
        for html in (render_html(res.session), t.html):
            dom = parse(html)
            plain, png, md = displays(html)
            assert plain.text.strip() == '5'
            assert png.one('img').attrs['src'] == 'data:image/png;base64,iVBORw0KGgo='
            assert md.one('h1').text.strip() == 'odd heading'
            assert dom.one(cls='rlm-header').attrs.get('data-status') == 'final'
            assert dom.one(cls='rlm-answer').text == 'ok'
    finally: t.close()
    assert wait_for(lambda: not timeline_threads())


def test_render_html_escapes_markup_in_the_fields_of_a_session_read_from_a_file(rich, tmp_path):
    import nbformat, rlm_nb
    res, srv, html = rich
    payload = '"><img src=x onerror=alert(document.domain)>'
    path = res.export(tmp_path/'inj.ipynb')
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        m = c.metadata.get('rlm_nb', {})
        if 'cell' in m:
            m['cell']['status'] = payload
            for sc in m['cell']['subcalls']: sc['id'] = payload
        if 'iteration' in m: m['iteration']['kind'] = payload
    nbformat.write(nb, tmp_path/'tampered.ipynb')
    s = rlm_nb.load_session(tmp_path/'tampered.ipynb')
    assert {c.status for c in s.cells} == {payload} and {it.kind for it in s.iterations} == {payload}
    assert s.subcalls and {sc.id for sc in s.subcalls} == {payload}
    tampered = render_html(s)
    assert '<img src=x' not in tampered
    dom = parse(tampered)
    assert not dom.all('img') and not handlers(dom)
    assert [c.attrs.get('data-status') for c in dom.all('div', 'rlm-cell')] == [payload] * len(s.cells)
    assert [c.attrs.get('data-kind') for c in cards(dom)] == [payload] * len(s.iterations)
    assert [x.attrs.get('data-id') for x in dom.all('details', 'rlm-subcall')] == [payload] * len(s.subcalls)


def test_a_closed_timeline_stops_listening_to_its_rlm():
    srv = ScriptedServer(script(lambda body: repl("FINAL('two')" if 'second question' in str(body) else "FINAL('one')"))).start()
    try:
        r = rlm(srv)
        t1 = Timeline(interval=0.05).attach(r)
        first = r('first question', context='abc')
        t1.close()
        html = t1.html
        t2 = Timeline(interval=0.05).attach(r)
        try: second = r('second question', context='abc')
        finally: t2.close()
    finally: srv.stop()
    assert (first.answer, second.answer) == ('one', 'two')
    assert t1.session is first.session and t1.html == html  # the closed timeline was not touched by the second run
    assert parse(t1.html).one(cls='rlm-answer').text == 'one'
    assert t2.session is second.session and parse(t2.html).one(cls='rlm-answer').text == 'two'
    assert wait_for(lambda: not timeline_threads()), f"timeline threads left after close(): {timeline_threads()}"
