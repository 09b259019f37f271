"""Render README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, can't be installed from a registry).

Markdown cells are copied as they are (image paths made relative to the repository root) and code cells become
```python blocks. With --check, exit 1 if README.md
is not what index.ipynb renders to."""
import re, sys, pathlib, nbformat

root = pathlib.Path(__file__).resolve().parent.parent


def render(nb) -> str:
    parts = []
    for cell in nb.cells:
        src = cell.source.strip()
        if not src or src.startswith('#| hide'): continue
        if cell.cell_type == 'markdown': parts.append(re.sub(r'\]\((images/[^)]+)\)', r'](nbs/\1)', src)) # paths from the repo root
        elif cell.cell_type == 'code':
            code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
            if code: parts.append(f"```python\n{code}\n```")
    return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    text = render(nbformat.read(root/'nbs'/'index.ipynb', as_version=4))
    readme = root/'README.md'
    if '--check' in sys.argv:
        if readme.read_text(encoding='utf-8') != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `python .ci/readme.py`")
    else: readme.write_text(text, encoding='utf-8')
