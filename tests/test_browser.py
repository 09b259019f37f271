"""Real-browser test of the live timeline and the `%%rlm` magic.

JupyterLab (started here on 127.0.0.1 with a token, in a temporary root and config) runs a notebook in a headless
Chromium or Chrome driven by playwright. The notebook loads the extension and runs a `%%rlm` cell against a ScriptedServer started
by this test; the test reads the rendered DOM (the DOM contract of the timeline) while the cell runs and after it ends,
saves the notebook, and checks the saved file keeps the timeline as static HTML.
No browser is ever downloaded: the test finds an installed one (`find_browser`; `.ci/run` installs Debian's chromium).
Without one, or without the `browser` extra (playwright, jupyterlab), it is skipped with the command that fixes it;
under CI (`CI=true`) it fails instead, because CI must run it."""
import json, os, re, shutil, socket, subprocess, sys, threading, time, urllib.request, urllib.error, secrets
from pathlib import Path
import nbformat, nbformat.sign, psutil, pytest
from helpers import repl, is_root, turn, last_user, messages

CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--no-proxy-server']
ARTIFACTS = Path(__file__).parent / 'artifacts'
DOCS_IMAGE = Path(__file__).parent.parent / 'nbs' / 'images' / 'timeline.png'
SECOND = 1000  # playwright timeouts are in ms
LAB_START_TIMEOUT = 120
pytestmark = pytest.mark.timeout(900)


# ---------------------------------------------------------------------------------------------------------------
# Finding a browser. Nothing is downloaded here: the test drives a Chromium or Chrome that is already installed.
# Without one (or without the `browser` extra) it is skipped with the one command that fixes it, except under CI,
# where it must run.

BROWSER_ENV = 'RLM_NB_CHROMIUM'  # a Chromium/Chrome binary to use instead of the lookup; `none` pretends there is none
BROWSER_NAMES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome', 'chrome.exe']
BROWSER_EXTRA = 'python -m pip install -e ".[browser]"'


def usual_places(env=os.environ) -> list:
    "Where Chromium and Chrome are installed by Linux packages, snap, the macOS and Windows installers, and playwright."
    home = Path(env.get('HOME') or env.get('USERPROFILE') or Path.home())
    mac = ['Chromium.app/Contents/MacOS/Chromium', 'Google Chrome.app/Contents/MacOS/Google Chrome']
    places = [Path(p) for p in ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome',
                                '/usr/bin/google-chrome-stable', '/opt/google/chrome/chrome', '/snap/bin/chromium']]
    places += [root / app for root in (Path('/Applications'), home / 'Applications') for app in mac]
    places += [Path(env[v]) / 'Google/Chrome/Application/chrome.exe' for v in ('PROGRAMFILES', 'PROGRAMFILES(X86)', 'LOCALAPPDATA') if env.get(v)]
    caches = ([Path(env['PLAYWRIGHT_BROWSERS_PATH'])] if env.get('PLAYWRIGHT_BROWSERS_PATH') else
              [home / '.cache/ms-playwright', home / 'Library/Caches/ms-playwright', home / 'AppData/Local/ms-playwright'])
    for cache in caches:  # `python -m playwright install chromium` puts them here, newest revision first
        found = [p for pat in ('chromium-*/chrome-*/chrome', 'chromium-*/chrome-*/chrome.exe', 'chromium-*/chrome-*/*.app/Contents/MacOS/*')
                 for p in cache.glob(pat)]
        places += sorted(found, key=lambda p: int(re.sub(r'\D', '', p.relative_to(cache).parts[0]) or 0), reverse=True)
    return places


def executable(p: Path) -> bool: return p.is_file() and os.access(p, os.X_OK)


def find_browser(env=os.environ, places=None):
    "The Chromium or Chrome to drive: $RLM_NB_CHROMIUM, else the usual names on PATH, else the usual places; or None."
    if env.get(BROWSER_ENV): return None if env[BROWSER_ENV].strip().lower() == 'none' else Path(env[BROWSER_ENV])
    for name in BROWSER_NAMES:
        if (hit := shutil.which(name, path=env.get('PATH', ''))): return Path(hit)
    return next((p for p in (usual_places(env) if places is None else places) if executable(p)), None)


def install_browser_command(system=sys.platform) -> str:
    "The one command that installs a Chromium the browser test finds: playwright's own build (with its libraries, via apt)."
    return f"python -m playwright install{' --with-deps' if system.startswith('linux') and shutil.which('apt-get') else ''} chromium"


def in_ci(env=os.environ) -> bool: return env.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')


def cannot_run(why: str, fix: str):
    "Skip with the reason and the fix; under CI the browser test must run, so it fails instead."
    if in_ci(): pytest.fail(f'CI is set and {why}, but CI must run the browser test: {fix}', pytrace=False)
    pytest.skip(f'{why}: {fix}')


def require_browser() -> Path:
    "The browser to drive, with playwright and jupyterlab importable; otherwise skip (fail under CI) and say how."
    missing = []
    for module in ('playwright.sync_api', 'jupyterlab'):
        try: __import__(module)
        except ImportError: missing.append(module.split('.')[0])
    path = find_browser()
    if path is not None and not executable(path): pytest.fail(f'{BROWSER_ENV}={path} is not an executable file', pytrace=False)
    why = ([f"the `browser` extra ({' and '.join(missing)}) is not installed"] if missing else []) + \
          ([f'no Chromium or Chrome was found (${BROWSER_ENV}, PATH, the usual install places)'] if path is None else [])
    fix = ' && '.join(([BROWSER_EXTRA] if missing else []) + ([install_browser_command()] if path is None else []))
    if why: cannot_run(' and '.join(why), fix + (f' (or set {BROWSER_ENV}=/path/to/chrome)' if path is None else ''))
    return path


# ---------------------------------------------------------------------------------------------------------------
# JupyterLab and the browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Lab:
    "A JupyterLab server on 127.0.0.1 in a temporary root, with a REST helper."
    def __init__(self, root: Path, home: Path):
        self.root, self.home, self.port, self.token = root, home, free_port(), secrets.token_hex(16)
        self.url = f'http://127.0.0.1:{self.port}'
        self.log_path = home / 'lab.log'
        self.proc, self.descendants = None, {}

    def env(self) -> dict:
        "The user's Jupyter/IPython configuration must not leak in: config, data, runtime and lab dirs are private."
        env = dict(os.environ)
        for var, sub in [('JUPYTER_CONFIG_DIR', 'config'), ('JUPYTER_DATA_DIR', 'data'), ('JUPYTER_RUNTIME_DIR', 'runtime'),
                         ('IPYTHONDIR', 'ipython'), ('JUPYTERLAB_SETTINGS_DIR', 'lab-settings'),
                         ('JUPYTERLAB_WORKSPACES_DIR', 'lab-workspaces')]:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(self.home / sub)
        env.pop('JUPYTER_PATH', None); env.pop('JUPYTER_PREFER_ENV_PATH', None)
        env['LITELLM_LOCAL_MODEL_COST_MAP'] = 'True'  # never fetch litellm's price map
        env['NO_PROXY'] = env['no_proxy'] = ','.join(filter(None, ['127.0.0.1,localhost', env.get('NO_PROXY'), env.get('no_proxy')]))
        env['PYTHONUNBUFFERED'] = '1'
        return env

    def write_config(self):
        config = self.home / 'config'
        (config / 'labconfig').mkdir(parents=True, exist_ok=True)
        (config / 'jupyter_server_config.json').write_text(json.dumps({
            'ServerApp': {'ip': '127.0.0.1', 'port': self.port, 'port_retries': 0, 'open_browser': False,
                          'root_dir': str(self.root), 'terminals_enabled': False, 'allow_root': True},
            'IdentityProvider': {'token': self.token},
            'LabApp': {'expose_app_in_browser': True, 'news_url': None,
                       'check_for_updates_class': 'jupyterlab.NeverCheckForUpdate', 'extension_manager': 'readonly'},
        }))
        # no news/announcement toasts over the screenshot, no extension manager reaching for PyPI
        (config / 'labconfig' / 'page_config.json').write_text(json.dumps({'disabledExtensions': {
            '@jupyterlab/apputils-extension:announcements': True, '@jupyterlab/extensionmanager-extension': True}}))

    def start(self):
        self.write_config()
        self.log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser'], cwd=self.root, env=self.env(),
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f'JupyterLab exited with {self.proc.returncode} while starting:\n{self.log_tail()}')
            try:
                self.api('GET', '/api/status'); self.api('GET', '/lab', raw=True)
                return self
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f'JupyterLab did not answer in {LAB_START_TIMEOUT}s:\n{self.log_tail()}')
                time.sleep(0.5)

    def log_tail(self, n=60) -> str:
        try: return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-n:])
        except OSError: return ''

    def api(self, method: str, path: str, body=None, raw=False, timeout=30):
        req = urllib.request.Request(self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={'Authorization': f'token {self.token}', 'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        return data if raw else (json.loads(data) if data else None)

    def kernels(self) -> list: return self.api('GET', '/api/kernels')

    def page_url(self, path: str, workspace: str) -> str:
        "A notebook opened in a fresh workspace (so an earlier page's tabs and kernels are not restored)."
        return f'{self.url}/lab/workspaces/{workspace}/tree/{path}?reset&token={self.token}'

    def shutdown_kernels(self, timeout=30):
        "DELETE every kernel through the REST API and wait until the server lists none."
        for k in self.kernels():
            try: self.api('DELETE', f"/api/kernels/{k['id']}", timeout=timeout)
            except urllib.error.HTTPError as e:
                if e.code != 404: raise
        deadline = time.monotonic() + timeout
        while self.kernels() and time.monotonic() < deadline: time.sleep(0.3)
        assert not self.kernels(), f'kernels still listed after DELETE: {self.kernels()}'

    def remember_descendants(self):
        "Note every process under the server (kernels, and the kernels they start) so none can outlive it unnoticed."
        if self.proc is None: return
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                try: self.descendants[p.pid] = (p, ' '.join(p.cmdline())[:200])
                except (psutil.NoSuchProcess, psutil.AccessDenied): pass
        except psutil.NoSuchProcess: pass

    def stop(self) -> list:
        "Shut the kernels, then the server; kill and return whatever it started that is still alive."
        if self.proc is None: return []
        self.remember_descendants()
        errors = []
        if self.proc.poll() is None:
            try: self.shutdown_kernels()
            except Exception as e: errors.append(f'kernel shutdown through the REST API failed: {e!r}')
            self.remember_descendants()
            self.proc.terminate()  # SIGTERM: the server stops cleanly, shutting down any kernel it still has
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired:
                errors.append('JupyterLab did not stop within 30 s of SIGTERM; killed')
                self.proc.kill(); self.proc.wait(10)
        self.log.close()
        left = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [(p, cmd) for p, cmd in self.descendants.values() if alive(p)]
            if not left: break
            time.sleep(0.2)
        for p, _ in left:
            try: p.kill()
            except psutil.NoSuchProcess: pass
        self.proc = None
        return errors + [f'process outlived JupyterLab: pid {p.pid}: {cmd}' for p, cmd in left]


def alive(p: psutil.Process) -> bool:
    try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return False


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A running JupyterLab; its kernels are deleted through the REST API and the server stopped at the end."
    require_browser()
    base = tmp_path_factory.mktemp('lab')
    root, home = base / 'root', base / 'home'
    root.mkdir(); home.mkdir()
    lab = Lab(root, home)
    try:
        lab.start()
        yield lab
    finally:
        leftovers = lab.stop()
        assert not leftovers, 'JupyterLab teardown: ' + '; '.join(leftovers) + '\n' + lab.log_tail()


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "The installed Chromium or Chrome, headless with a fresh profile, driven by playwright."
    path = require_browser()
    from playwright.sync_api import sync_playwright
    profile = tmp_path_factory.mktemp('chromium-profile')
    with sync_playwright() as p:
        try: ctx = p.chromium.launch_persistent_context(str(profile), executable_path=str(path), headless=True,
                                                        args=CHROMIUM_ARGS, viewport={'width': 1280, 'height': 1400},
                                                        timeout=60 * SECOND)
        except Exception as e:
            pytest.fail(f'{path} did not start under playwright ({str(e).strip().splitlines()[0]}); '
                        f'point {BROWSER_ENV} at another Chromium or Chrome', pytrace=False)
        try: yield ctx
        finally: ctx.close()


# ---------------------------------------------------------------------------------------------------------------
# Driving a notebook in JupyterLab (through window.jupyterapp, which LabApp.expose_app_in_browser provides)

CURRENT = "window.jupyterapp && window.jupyterapp.shell.currentWidget"


def open_notebook(ctx, lab: Lab, path: str, workspace: str):
    page = ctx.new_page()
    page.set_default_timeout(60 * SECOND)
    page.console_messages = []
    page.on('console', lambda m: page.console_messages.append(f'{m.type}: {m.text}'))
    page.on('pageerror', lambda e: page.console_messages.append(f'pageerror: {e}'))
    page.goto(lab.page_url(path, workspace), wait_until='domcontentloaded', timeout=120 * SECOND)
    page.wait_for_function(f"""() => {{ const w = {CURRENT};
        return w && w.context && w.context.path === {json.dumps(path)} && w.context.isReady && w.content
               && w.content.widgets.length > 0 }}""", timeout=120 * SECOND)
    return page


def wait_kernel_idle(page, timeout=120):
    page.wait_for_function(f"""() => {{ const w = {CURRENT};
        return w && w.sessionContext && w.sessionContext.isReady && w.sessionContext.session
               && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle' }}""",
                           timeout=timeout * SECOND)


def command(page, name: str, args: dict | None = None, wait=True):
    "Execute a JupyterLab command; with wait=False return at once instead of awaiting its promise (running cells)."
    js = ("([name, args]) => window.jupyterapp.commands.execute(name, args)" if wait else
          "([name, args]) => { window.jupyterapp.commands.execute(name, args); }")
    page.evaluate(js, [name, args or {}])


def cell(page, i: int):
    "The i-th cell of the notebook in the current tab."
    return page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell').nth(i)


def prompt(page, i: int) -> str: return cell(page, i).locator('.jp-InputPrompt').inner_text()


def save(page, timeout=60):
    command(page, 'docmanager:save')
    page.wait_for_function(f"() => {{ const w = {CURRENT}; return w && w.context && !w.context.model.dirty }}",
                           timeout=timeout * SECOND)


def write_notebook(path: Path, sources: list):
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def screenshot(locator, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    locator.screenshot(path=str(out))
    return out


def debug_dump(page, lab: Lab, name: str) -> str:
    "What the page and the server looked like, for a failure message."
    ARTIFACTS.mkdir(exist_ok=True)
    try: page.screenshot(path=str(ARTIFACTS / f'{name}-failure.png'), full_page=True)
    except Exception: pass
    try:
        html = page.evaluate("() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell'))"
                             ".map((c, i) => `--- cell ${i} ${c.querySelector('.jp-InputPrompt')?.innerText}\\n`"
                             " + (c.querySelector('.jp-OutputArea')?.innerHTML || '')).join('\\n')")
        (ARTIFACTS / f'{name}-failure.html').write_text(html)
        html = re.sub(r'<style>.*?</style>|<svg.*?</svg>', '', html, flags=re.S)  # keep the message readable
    except Exception as e: html = f'(no DOM: {e!r})'
    return (f'\n--- DOM of the cells (tests/artifacts/{name}-failure.html) ---\n{html[:6000]}'
            f'\n--- browser console ---\n' + '\n'.join(getattr(page, 'console_messages', [])[-30:]) +
            f'\n--- JupyterLab log ---\n{lab.log_tail(40)}')



# ---------------------------------------------------------------------------------------------------------------
# The scripted session: iteration 1 prints and makes one llm_query; iteration 2 makes a batch of three and FINALs.
# The root request for iteration 2 is held at a gate until the test has looked at the live timeline.

DOC_LINES = ['2024-05-01 order 1001 shipped to Lisbon',
             '2024-05-02 order 1002 delayed: customs hold in Rotterdam',
             '2024-05-03 order 1003 shipped to Oslo']
QUESTION = 'Which order is delayed, and why?'
ANSWER = 'Order 1002 is delayed by a customs hold in Rotterdam.'
ROOT = [
    "Let me look at the document first, and ask a sub-model about its first line.\n" + repl("""
        lines = doc.splitlines()
        print(len(lines), 'lines')
        first = llm_query('Summarise this line in three words: ' + lines[0])
        print('first line:', first)
    """),
    "Now I check **every line** at once.\n" + repl("""
        verdicts = llm_query_batched([f'Is this line about a delay? {l}' for l in lines])
        print(verdicts)
        i = [v.startswith('yes') for v in verdicts].index(True)
        FINAL(f"Order {lines[i].split()[2]} is delayed by a {verdicts[i].split(': ', 1)[1]}.")
    """),
]
FIRST_PROMPT = 'Summarise this line in three words: ' + DOC_LINES[0]
FIRST_ANSWER = 'order shipped Lisbon'
SUBCALLS = 1 + len(DOC_LINES)


def sub_answer(prompt: str) -> str:
    if prompt.startswith('Summarise'): return FIRST_ANSWER
    return 'yes: customs hold in Rotterdam' if 'delayed' in prompt else 'no: shipped on time'


def usage_of(body: dict, reply: str) -> int:
    "Total tokens ScriptedServer reports for this request and reply (its rule: characters // 4, at least 1)."
    prompt = sum(len(str(m.get('content', ''))) for m in messages(body))
    return max(1, prompt // 4) + max(1, len(str(reply)) // 4)


class ScriptedSession:
    "The server script, with a gate on the second root request and a record of what was served."
    def __init__(self):
        self.gate_reached, self.gate_open = threading.Event(), threading.Event()
        self.served = []  # (is_root, body, reply)

    def __call__(self, body):
        if is_root(body):
            n = turn(body)
            if n == 2:
                self.gate_reached.set()
                self.gate_open.wait(180)  # opened by the test; never hang for ever
            reply = ROOT[n - 1] if n <= len(ROOT) else 'FINAL(script exhausted)'
        else:
            time.sleep(0.3)  # sub-calls take a moment, like real ones
            reply = sub_answer(last_user(body))
        self.served.append((is_root(body), body, reply))
        return reply

    def tokens(self, root: bool) -> int:
        return sum(usage_of(body, reply) for r, body, reply in self.served if r == root)


class Checks:
    "Contract checks that do not stop the test, so one run reports every deviation at once."
    def __init__(self): self.failures = []
    def __call__(self, ok, message: str):
        if not ok: self.failures.append(message)
        return ok


def soft_wait(page, expression: str, timeout=10) -> bool:
    "Poll a JS predicate for a while (the live timeline redraws every 0.25 s); False instead of raising."
    try: page.wait_for_function(expression, timeout=timeout * SECOND); return True
    except Exception: return False


def root_tag(locator) -> str:
    "The opening tag of the first element `locator` matches."
    if not locator.count(): return '(absent)'
    return locator.first.evaluate("e => e.outerHTML.slice(0, e.outerHTML.indexOf('>') + 1)")


def attr(locator, name: str):
    return locator.get_attribute(name) if locator.count() else None


# ---------------------------------------------------------------------------------------------------------------

def test_rlm_magic_live_timeline_in_jupyterlab(lab, browser, server):
    t0 = time.monotonic()
    steps = []
    def step(name): steps.append(f'{time.monotonic() - t0:6.1f}s {name}')
    session = ScriptedSession()
    srv = server(session)
    nb_path = lab.root / 'rlm.ipynb'
    write_notebook(nb_path, [
        "import sys\nprint(sys.executable)\n%load_ext rlm_nb\n"
        f"%config RLMMagics.model = 'openai/scripted'\n%config RLMMagics.api_base = {srv.url!r}",
        'doc = """' + '\n'.join(DOC_LINES) + '"""',
        f"%%rlm -c doc\n{QUESTION}",
    ])
    check = Checks()
    page = open_notebook(browser, lab, nb_path.name, 'live')
    RLM_CELL = 2
    out = cell(page, RLM_CELL).locator('.jp-OutputArea')
    timeline = out.locator('.rlm-timeline')
    card = lambda n: timeline.locator(f'details.rlm-card[data-iteration="{n}"]')
    stat = lambda name: timeline.locator(f'span.rlm-stat[data-stat="{name}"]')
    in_rlm_cell = f"document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')[{RLM_CELL}]"
    try:
        wait_kernel_idle(page)
        step('notebook open, kernel idle')
        assert lab.kernels() and all(k['name'] == 'python3' for k in lab.kernels()), lab.kernels()
        command(page, 'notebook:run-all-cells', wait=False)

        # the notebook kernel is this interpreter, the one with rlm_nb installed
        page.wait_for_function(f"""() => {{ const c = document.querySelectorAll(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')[0];
            return c && !c.querySelector('.jp-InputPrompt').innerText.includes('*')
                   && c.querySelector('.jp-InputPrompt').innerText.match(/\\d/) }}""", timeout=120 * SECOND)
        first_out = cell(page, 0).locator('.jp-OutputArea').inner_text().strip()
        assert first_out.splitlines()[0] == sys.executable, \
            f'the notebook kernel is not {sys.executable} (the python with rlm_nb): cell 0 printed {first_out!r}'
        for i in (0, 1):
            err = cell(page, i).locator('[data-mime-type="application/vnd.jupyter.error"]')
            assert err.count() == 0, f'notebook cell {i} failed:\n' + '\n'.join(err.all_inner_texts())
        step('extension loaded in the notebook kernel')

        # ---- live: iteration 1 is on screen (with its sub-call) while the cell still runs
        cell(page, RLM_CELL).locator('details.rlm-card[data-iteration="1"] details.rlm-subcall').wait_for(
            state='attached', timeout=180 * SECOND)
        assert session.gate_reached.wait(60), 'the root request for iteration 2 never reached the server'
        step('live: iteration 1 card with its sub-call in the DOM, iteration 2 held at the server')
        lab.remember_descendants()  # the RLM's own kernel is running now: it must not outlive the lab either
        assert not session.gate_open.is_set()
        running_prompt = prompt(page, RLM_CELL)
        assert '*' in running_prompt, f'the %%rlm cell is not executing while iteration 2 is pending: prompt {running_prompt!r}'
        check(out.locator('.jupyter-widgets').count() > 0, 'live: the timeline is not an ipywidgets view while running')
        check(timeline.count() == 1, f'live: expected one div.rlm-timeline while running, found {timeline.count()}')
        # the live root is an ipywidgets box, which can't carry data-*; the header inside it carries the status
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('.rlm-timeline .rlm-header[data-status=\"running\"]')"),
              'live: no .rlm-header[data-status="running"] inside .rlm-timeline while running (DOM contract); '
              f'its root element is {root_tag(timeline)}')
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('span.rlm-stat[data-stat=\"status\"][data-value=\"running\"]')"),
              f'live: status stat is {attr(stat("status"), "data-value")!r}, not "running"')
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('span.rlm-stat[data-stat=\"iterations\"][data-value=\"1\"]')"),
              f'live: iterations stat is {attr(stat("iterations"), "data-value")!r}, not "1"')
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('span.rlm-stat[data-stat=\"subcalls\"][data-value=\"1\"]')"),
              f'live: subcalls stat is {attr(stat("subcalls"), "data-value")!r}, not "1"')
        check(card(1).count() == 1 and attr(card(1), 'open') is not None, 'live: iteration 1 is not the open newest card')
        check(soft_wait(page, f"""() => ({in_rlm_cell}.querySelector(
                  'details.rlm-card[data-iteration="1"] details.rlm-subcall .rlm-response')?.textContent || '')
                  .includes({json.dumps(FIRST_ANSWER)})"""), 'live: the sub-call of iteration 1 does not show its response')
        check(timeline.locator('.rlm-final').count() == 0, 'live: a final answer is shown before the session ended')
        screenshot(cell(page, RLM_CELL), 'timeline-live.png')
    except Exception as e:
        raise AssertionError(f'{e}\n' + '\n'.join(steps) + debug_dump(page, lab, 'live')) from e
    finally:
        session.gate_open.set()

    # ---- the end: the static timeline replaces the widget
    try:
        page.wait_for_function(f"() => !{in_rlm_cell}.querySelector('.jp-InputPrompt').innerText.includes('*')",
                               timeout=180 * SECOND)
        step('the %%rlm cell finished')
        errors = out.locator('[data-mime-type="application/vnd.jupyter.stderr"], [data-mime-type="application/vnd.jupyter.error"]')
        assert errors.count() == 0, 'the %%rlm cell wrote errors:\n' + '\n'.join(errors.all_inner_texts())
        timeline.first.wait_for(state='attached', timeout=30 * SECOND)
        check(timeline.count() == 1, f'end: expected one div.rlm-timeline, found {timeline.count()}')
        check(out.locator('.jupyter-widgets').count() == 0, 'end: the live widget was not replaced by static HTML')
        check(attr(timeline.first, 'data-status') == 'final', f'end: timeline data-status={attr(timeline.first, "data-status")!r}')
        check(timeline.locator('.rlm-header').count() == 1, 'end: no .rlm-header')
        check('openai/scripted' in (timeline.locator('.rlm-model').first.text_content() or ''), 'end: .rlm-model does not name the model')
        check(timeline.locator('.rlm-sub-model').count() == 1, 'end: no .rlm-sub-model')
        check(QUESTION in timeline.first.text_content(), 'end: the question is not shown')
        # iteration cards, newest open, older folded
        cards = timeline.locator('details.rlm-card')
        check([c.get_attribute('data-iteration') for c in cards.all()] == ['1', '2'],
              f'end: cards {[c.get_attribute("data-iteration") for c in cards.all()]}, expected iterations 1 and 2')
        check(attr(card(2), 'open') is not None, 'end: the newest card (iteration 2) is not open')
        check(attr(card(1), 'open') is None, 'end: the older card (iteration 1) is not folded')
        check('Let me look at the document first' in (card(1).locator('.rlm-reasoning').text_content() or ''),
              'end: iteration 1 reasoning missing')
        check(card(2).locator('.rlm-reasoning strong').count() == 1, 'end: iteration 2 reasoning is not rendered markdown')
        c1 = card(1).locator('div.rlm-cell[data-index="0"]')
        check(attr(c1, 'data-status') == 'ok', f'end: iteration 1 cell status {attr(c1, "data-status")!r}')
        check('llm_query' in (c1.locator('pre.rlm-code').text_content() or ''), 'end: iteration 1 code missing')
        stdout1 = c1.locator('.rlm-output .rlm-stdout').all_text_contents()
        check(any('3 lines' in t for t in stdout1) and any(f'first line: {FIRST_ANSWER}' in t for t in stdout1),
              f'end: iteration 1 stdout is {stdout1!r}')
        c2 = card(2).locator('div.rlm-cell[data-index="0"]')
        check(attr(c2, 'data-status') == 'ok', f'end: iteration 2 cell status {attr(c2, "data-status")!r}')
        # sub-calls with their prompts and responses
        subs = timeline.locator('details.rlm-subcall')
        check(subs.count() == SUBCALLS, f'end: {subs.count()} details.rlm-subcall, expected {SUBCALLS}')
        s1 = card(1).locator('details.rlm-subcall')
        check(s1.count() == 1, f'end: iteration 1 shows {s1.count()} sub-calls, expected 1')
        check(attr(s1.first, 'data-kind') == 'llm', f'end: sub-call kind {attr(s1.first, "data-kind")!r}')
        check(FIRST_PROMPT in (s1.first.locator('.rlm-prompt').text_content() or ''), 'end: sub-call prompt not shown')
        check(FIRST_ANSWER in (s1.first.locator('.rlm-response').text_content() or ''), 'end: sub-call response not shown')
        s2 = card(2).locator('details.rlm-subcall')
        check(s2.count() == len(DOC_LINES), f'end: iteration 2 shows {s2.count()} batched sub-calls, expected {len(DOC_LINES)}')
        check(any('customs hold' in t for t in s2.locator('.rlm-response').all_text_contents()),
              'end: the batched sub-call responses are not shown')
        # final answer and header totals
        final = timeline.locator('.rlm-final')
        check(attr(final, 'data-stop-reason') == 'final', f'end: .rlm-final data-stop-reason={attr(final, "data-stop-reason")!r}')
        answer = final.locator('.rlm-answer').text_content() if final.locator('.rlm-answer').count() else None
        check(answer is not None and answer.strip() == ANSWER, f'end: .rlm-final .rlm-answer is {answer!r}, expected {ANSWER!r}')
        root_tokens, sub_tokens = session.tokens(root=True), session.tokens(root=False)
        expected = {'status': 'final', 'iterations': '2', 'subcalls': str(SUBCALLS), 'root-tokens': str(root_tokens),
                    'sub-tokens': str(sub_tokens)}
        shown = {k: attr(stat(k), 'data-value') for k in expected}
        check(shown == expected, f'end: header stats {shown}, expected {expected}')
        check(attr(stat('cost'), 'data-value') == '', f'end: cost of an unpriced model is {attr(stat("cost"), "data-value")!r}, expected ""')
        check(stat('elapsed').count() == 1, 'end: no elapsed stat')
        step('final DOM checked')

        # the screenshot the docs use: the %%rlm cell, newest card open
        shot = screenshot(cell(page, RLM_CELL), 'timeline.png')  # copied to the docs at the end, if all is well

        # client-side expand: clicking a folded card's summary opens it, and its sub-call's
        card(1).locator(':scope > summary').click()
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('details.rlm-card[data-iteration=\"1\"]').open", 5),
              'click: the folded card of iteration 1 did not open')
        s1.first.locator(':scope > summary').click()
        check(soft_wait(page, f"() => {in_rlm_cell}.querySelector('details.rlm-card[data-iteration=\"1\"] details.rlm-subcall').open", 5)
              and s1.first.locator('.rlm-response').is_visible(), 'click: the sub-call did not open to show its response')
        screenshot(cell(page, RLM_CELL), 'timeline-expanded.png')
        step('expand by click checked, screenshots saved')

        # ---- save, shut the kernel, read the file
        save(page)
        step('saved')
    except Exception as e:
        raise AssertionError(f'{e}\n' + '\n'.join(steps) + debug_dump(page, lab, 'final')) from e
    finally:
        page.close()
    lab.shutdown_kernels()
    step('kernel shut down through the REST API')
    nb = nbformat.read(nb_path, as_version=4)
    outputs = nb.cells[RLM_CELL].outputs
    html = [o for o in outputs if 'text/html' in o.get('data', {}) and 'rlm-timeline' in o['data']['text/html']]
    assert html, f'the saved %%rlm cell has no text/html output with rlm-timeline: {json.dumps(outputs)[:2000]}'
    check(ANSWER in html[0]['data']['text/html'] and 'data-status="final"' in html[0]['data']['text/html'],
          'saved: the static HTML lacks the answer or data-status="final"')
    check(not any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outputs),
          'saved: the %%rlm cell still holds a widget view (it needs widget state to render)')

    # ---- reopen the saved notebook without a kernel: the static timeline renders
    notary = nbformat.sign.NotebookNotary(data_dir=str(lab.home / 'data'))  # the server's signing key and database
    check(notary.check_signature(nb), 'saved: JupyterLab did not sign the saved notebook as trusted')
    for trusted in (True, False):
        name = 'rlm-reopened-trusted.ipynb' if trusted else 'rlm-reopened-untrusted.ipynb'
        reopen_without_kernel(browser, lab, nb, name, trusted, check, step)
    print('\n'.join(steps))
    assert not check.failures, 'timeline contract failures:\n- ' + '\n- '.join(check.failures) + '\n' + '\n'.join(steps)
    if os.environ.get('RLM_NB_DOCS_IMAGE'): # opt in, so a test run leaves the committed docs alone
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)  # the docs show what this test saw; only a passing run updates it


def reopen_without_kernel(browser, lab, nb, name: str, trusted: bool, check, step, RLM_CELL=2):
    """Open a copy of the saved notebook with no kernel. Trusted (signed, as the user's own saved notebook is): the
    timeline renders with its DOM contract. Untrusted (someone else's notebook): JupyterLab's sanitizer drops <style>
    and data-* attributes, but the cards and the answer must still be readable."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.metadata['kernelspec'] = {'name': 'rlm-nb-no-such-kernel', 'display_name': 'none', 'language': 'none'}
    nb.metadata.pop('language_info', None)
    nb.metadata['copy'] = name  # signatures are by content: the untrusted copy must differ from the signed one
    if trusted: nbformat.sign.NotebookNotary(data_dir=str(lab.home / 'data')).sign(nb)
    nbformat.write(nb, lab.root / name)
    what = 'reopened trusted' if trusted else 'reopened untrusted'
    page = open_notebook(browser, lab, name, name.removesuffix('.ipynb'))
    try:
        dialog = page.locator('.jp-Dialog')  # the kernel does not exist: JupyterLab asks; answer "No Kernel"
        dialog.wait_for(timeout=30 * SECOND)
        dialog.locator('.jp-mod-reject').click()
        dialog.wait_for(state='detached', timeout=30 * SECOND)
        out = cell(page, RLM_CELL).locator('.jp-OutputArea')
        timeline = out.locator('.rlm-timeline')
        timeline.first.wait_for(state='attached', timeout=30 * SECOND)
        check(timeline.count() == 1, f'{what}: {timeline.count()} .rlm-timeline in the %%rlm cell')
        answer = timeline.locator('.rlm-final .rlm-answer')
        check(answer.count() == 1 and answer.text_content().strip() == ANSWER, f'{what}: the answer is not shown')
        check(timeline.locator('details.rlm-card').count() == 2, f'{what}: the two iteration cards are not there')
        check(timeline.locator('details.rlm-subcall').count() == SUBCALLS, f'{what}: the sub-calls are not there')
        check(out.locator('.jp-mod-trusted').count() == (1 if trusted else 0), f'{what}: output trust is not as expected')
        kept = page.evaluate("""(t) => ({style: !!t.querySelector('style'), status: t.getAttribute('data-status'),
            stats: Object.fromEntries(Array.from(t.querySelectorAll('span.rlm-stat')).map(s => [s.dataset.stat, s.dataset.value]))})""",
                             timeline.first.element_handle())
        if trusted:
            check(kept['style'] and kept['status'] == 'final' and kept['stats'].get('iterations') == '2'
                  and kept['stats'].get('subcalls') == str(SUBCALLS), f'{what}: the DOM contract did not survive: {kept}')
        else:
            print(f'{what}: JupyterLab kept style={kept["style"]} data-status={kept["status"]!r} stats={kept["stats"]}')
        screenshot(cell(page, RLM_CELL), f'timeline-{name.removesuffix(".ipynb")}.png')
        step(f'{what}, without a kernel')
        assert lab.kernels() == [], f'{what}: opening the saved notebook started a kernel: {lab.kernels()}'
    except Exception as e:
        raise AssertionError(f'{e}' + debug_dump(page, lab, name.removesuffix('.ipynb'))) from e
    finally:
        page.close()


# ---------------------------------------------------------------------------------------------------------------
# The lookup and the skip, without a browser

def fake_binary(path: Path, mode=0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\n'); path.chmod(mode)
    return path


def test_find_browser_takes_the_env_var_then_path_then_the_usual_places(tmp_path):
    on_path, placed = fake_binary(tmp_path / 'bin' / 'chromium'), fake_binary(tmp_path / 'opt' / 'chrome')
    not_executable = fake_binary(tmp_path / 'bin2' / 'google-chrome', mode=0o644)
    assert find_browser({'PATH': str(on_path.parent)}, places=[placed]) == on_path
    assert find_browser({'PATH': str(not_executable.parent)}, places=[tmp_path / 'missing', not_executable, placed]) == placed
    assert find_browser({'PATH': str(on_path.parent), BROWSER_ENV: str(placed)}) == placed
    assert find_browser({'PATH': str(on_path.parent), BROWSER_ENV: 'none'}) is None
    assert find_browser({'PATH': ''}, places=[tmp_path / 'missing']) is None


def test_usual_places_cover_linux_macos_windows_and_playwright_downloads(tmp_path):
    old, new = (fake_binary(tmp_path / f'.cache/ms-playwright/chromium-{r}/chrome-linux/chrome') for r in (1100, 1200))
    places = usual_places({'HOME': str(tmp_path), 'PROGRAMFILES': str(tmp_path / 'pf')})
    for p in ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/snap/bin/chromium',
              '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome', '/Applications/Chromium.app/Contents/MacOS/Chromium',
              tmp_path / 'pf/Google/Chrome/Application/chrome.exe']:
        assert Path(p) in places, p
    assert places[-2:] == [new, old]  # playwright's own downloads last, the newest first
    assert not {old, new} & set(usual_places({'HOME': str(tmp_path), 'PLAYWRIGHT_BROWSERS_PATH': str(tmp_path / 'elsewhere')}))


def run_browser_test(**env) -> subprocess.CompletedProcess:
    "Run the browser test in a child pytest with `env` (None removes a variable)."
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
                           f'{__file__}::test_rlm_magic_live_timeline_in_jupyterlab'],
                          cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300)


def test_without_a_browser_it_is_skipped_with_the_fix_but_under_ci_it_fails():
    p = run_browser_test(**{BROWSER_ENV: 'none', 'CI': None})
    assert p.returncode == 0 and '1 skipped' in p.stdout, p.stdout + p.stderr
    assert install_browser_command() in p.stdout and BROWSER_ENV in p.stdout, p.stdout
    p = run_browser_test(**{BROWSER_ENV: 'none', 'CI': 'true'})
    assert p.returncode == 1 and 'CI must run the browser test' in p.stdout and 'skipped' not in p.stdout, p.stdout + p.stderr
