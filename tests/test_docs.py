"""The README and docs/ keep their promises: short README, tasks on the first screen, links, names and commands that exist.

The README's Python example is run by ``tests/test_architecture.py``; here every Python block of the
README and of ``docs/*.md`` must at least compile, every ``mm_core`` path or dotted name they cite must
exist, and every ``python -m mm_core ...`` / ``python -m mm_core.train ...`` command they show must name
a real sub-command and only options that sub-command has.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300
FIRST_SCREEN = 60
TASK_COMMANDS = ("python -m mm_core segment", "python -m mm_core count", "python -m mm_core track", "python app.py")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _outside_code(text: str) -> str:
    """The text with fenced code blocks blanked out (their lines kept, so line numbers hold)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            out.append("")
        else:
            out.append("" if fence else line)
    return "\n".join(out)


def _blocks(text: str, lang: str) -> list[tuple[str, str]]:
    """Fenced blocks of one language: (info string after the language, body)."""
    return re.findall(rf"^```{lang}([^\n]*)\n(.*?)^```", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _without_front_matter(text: str) -> str:
    """The text after a leading ``---`` YAML block (the Space's front matter: its ``#`` lines are comments)."""
    m = re.match(r"---\n.*?\n---\n", text, flags=re.S)
    return text[m.end():] if m else text


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _outside_code(_without_front_matter(path.read_text())).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            anchors.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    return anchors


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _outside_code(path.read_text()))


def test_readme_is_short_and_keeps_the_space_front_matter():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    assert lines[0] == "---" and "---" in lines[1:20], "the Hugging Face Space front matter opens the README"
    front = lines[1:lines.index("---", 1)]
    for key in ("sdk: gradio", "app_file: app.py", 'python_version: "3.11"'):
        assert key in front, key


def test_first_screen_shows_how_to_run_each_task():
    first = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])
    missing = [c for c in TASK_COMMANDS if c not in first]
    assert not missing, f"not in the README's first {FIRST_SCREEN} lines: {missing}"
    for setup in ("pip install -r requirements.txt && python app.py",
                  "pip install -r requirements.txt -r requirements-dev.txt && python -m pytest"):
        assert setup in first, setup


def test_every_docs_page_is_linked_from_the_readme_and_the_index():
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {"index.md", "how-it-works.md", "quality.md", "performance.md", "training.md",
            "batch-and-whole-slides.md", "gpu-and-spaces.md", "reliability.md", "development.md"} <= pages
    from_readme = {Path(link.split("#")[0]).name for link in _links(README) if link.startswith("docs/")}
    assert pages <= from_readme, f"docs pages the README does not link: {sorted(pages - from_readme)}"
    from_index = {link.split("#")[0] for link in _links(DOCS / "index.md")}
    assert pages - {"index.md"} <= from_index, sorted(pages - {"index.md"} - from_index)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    """Every relative link names a file that exists and, with ``#anchor``, a heading that it has."""
    bad = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):  # http(s), mailto
            continue
        target, _, anchor = link.partition("#")
        dest = (page.parent / target).resolve() if target else page
        if not dest.exists():
            bad.append(f"{link}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{link}: no heading with that anchor in {dest.name}")
    assert not bad, bad


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_python_blocks_compile(page):
    """Every Python block parses (blocks marked ``python notest`` need a cluster or a server, so are not run)."""
    for info, body in _blocks(page.read_text(), "python"):
        compile(body, f"{page.name} python block", "exec")


def _module_file(dotted: str) -> Path | None:
    base = REPO / Path(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _cited(page: Path) -> list[str]:
    """Everything a page writes as inline code or in a code block."""
    text = page.read_text()
    code = re.findall(r"`([^`\n]+)`", _outside_code(text))
    return code + [body for _, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M)]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_cited_files_and_names_exist(page):
    """``mm_core/...``, ``tests/...``, ``benchmarks/...`` paths exist; ``mm_core.a.b`` names a module or a
    top-level name of one (so a moved module cannot leave a stale reference behind)."""
    bad = []
    for code in _cited(page):
        for path in re.findall(r"(?<![\w/.])((?:mm_core|tests|benchmarks|examples)/[\w./-]*)", code):
            path = path.rstrip(".")
            if not (REPO / path).exists():
                bad.append(path)
        for dotted in re.findall(r"(?<![\w/])(mm_core(?:\.\w+)+)", code):
            parts = dotted.split(".")
            for k in range(len(parts), 0, -1):
                module = _module_file(".".join(parts[:k]))
                if module is not None:
                    break
            rest = parts[k:]
            if rest and rest[0] not in _top_level_names(module):
                bad.append(dotted)
    assert not bad, f"{page.name} cites what does not exist: {sorted(set(bad))}"


def _shown_commands(page: Path) -> list[str]:
    """``python -m mm_core ...`` and ``python -m mm_core.train ...`` commands, continuation lines joined."""
    text = page.read_text()
    chunks = [body.replace("\\\n", " ") for _, body in _blocks(text, "bash")] + re.findall(r"`([^`\n]+)`", text)
    commands = []
    for chunk in chunks:
        for line in chunk.splitlines():
            line = line.lstrip("# ").strip()
            m = re.search(r"python -m mm_core(\.train)? (\S+)(.*)", line)
            if m:
                commands.append((m.group(1) or "", m.group(2), re.sub(r"\s#.*", "", m.group(3))))
    return commands


def _subcommands(which: str) -> dict:
    if which == ".train":
        from mm_core.train.cli import build_parser
    else:
        from mm_core.cli import build_parser
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):  # python -m mm_core: one parser per sub-command
            return {name: set(sub._option_string_actions) for name, sub in action.choices.items()}
    task = next(a for a in parser._actions if not a.option_strings and a.choices)  # python -m mm_core.train TASK
    return {name: set(parser._option_string_actions) for name in task.choices}


def test_shown_commands_name_real_subcommands_and_options():
    """A renamed sub-command or option fails here until the docs follow."""
    pytest.importorskip("torch")  # the training CLI's parser lives beside torch code
    known = {which: _subcommands(which) for which in ("", ".train")}
    checked, bad = 0, []
    for page in _pages():
        for which, sub, rest in _shown_commands(page):
            if sub in ("...", "SOURCE"):
                continue
            options = known[which].get(sub)
            if options is None:
                bad.append(f"{page.name}: python -m mm_core{which} {sub}: no such sub-command")
                continue
            checked += 1
            bad += [f"{page.name}: python -m mm_core{which} {sub} {opt}: no such option"
                    for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest) if opt not in options]
    assert checked >= 20, checked  # the README and docs show many commands; the scan must find them
    assert not bad, bad
