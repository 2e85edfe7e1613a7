"""The documentation cannot drift from the code: the site builds strictly, the README stays short,
every `rnnlib` command shown resolves to a valid configuration (or parses, for commands that
need a trained bundle), every script and module named exists with the flags used, and every
Python block compiles with imports that resolve."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIGURED = {"prepare", "train", "tune", "score"}  # `--print-config` resolves their whole configuration
SEPARATORS = {"&&", "||", "|", ";", "&"}


def code_blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, body, line) of every fenced block of a Markdown page."""
    blocks, language, body, start = [], None, [], 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if language is None:
                language, body, start = line[3:].strip() or "text", [], number
            else:
                blocks.append((language, "\n".join(body), start))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split
    at `&&`, `||`, `|`, `;` and `&`, leading `VAR=value` assignments left out."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in [*shlex.split(line, comments=True), ";"]:
            if token not in SEPARATORS:
                current.append(token)
                continue
            while current and re.fullmatch(r"[A-Za-z_]\w*=.*", current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
    return commands


def shown(language: str) -> list[tuple[str, list[str]]]:
    """Every command of every block of `language` in the README and the docs, with where it is."""
    found = []
    for page in PAGES:
        for block_language, body, line in code_blocks(page):
            if block_language == language:
                found += [(f"{page.name}:{line}", c) for c in shell_commands(body)]
    return found


def test_the_readme_stays_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: the depth belongs in docs/"


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (the docs extra): a broken link or anchor, or a page left out of
    the nav, fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "train" / "index.html").is_file()


def test_the_docs_show_commands_at_all():
    """The checks below find what they check (a parser that found nothing would pass them)."""
    commands = [c for _, c in shown("bash")]
    assert sum(c[0] == "rnnlib" for c in commands) >= 15
    assert {c[1] for c in commands if c[0] == "rnnlib"} >= {"prepare", "train", "tune", "score", "predict"}


@pytest.mark.parametrize(
    "where,command",
    [(w, c) for w, c in shown("bash") if c[0] == "rnnlib"],
    ids=lambda value: value if isinstance(value, str) else " ".join(value)[:60],
)
def test_every_rnnlib_command_shown_resolves(where, command, monkeypatch):
    from rnnlib_flows.cli import _parser, main

    monkeypatch.chdir(REPO)  # the commands are written for the repository root
    args = command[1:]
    if args[0] in CONFIGURED:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([*args, "--print-config"])
            except SystemExit as exc:
                status = exc.code
        assert status == 0, f"{where}: {' '.join(command)}\n{err.getvalue()[-2000:]}"
        assert "source:" in out.getvalue() or "bundle:" in out.getvalue()
    else:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                _parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"{where}: {' '.join(command)}: {err.getvalue()}")


def test_every_script_and_module_shown_exists_with_its_flags():
    checked = 0
    for where, command in shown("bash"):
        runner = Path(command[0]).name
        if runner in {"python", "python3"} and len(command) > 1:
            if command[1] == "-m":
                assert importlib.util.find_spec(command[2]) is not None, f"{where}: no module {command[2]}"
                source = Path(importlib.util.find_spec(command[2]).origin).read_text(encoding="utf-8")
            elif command[1].endswith(".py"):
                script = REPO / command[1]
                assert script.is_file(), f"{where}: no script {command[1]}"
                source = script.read_text(encoding="utf-8")
            else:
                continue
        elif runner == "torchrun":
            module = command[command.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
            source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        else:
            continue
        start = command.index("-m") + 2 if "-m" in command else 2
        flags = {t.split("=")[0] for t in command[start:] if t.startswith("--")}
        for flag in flags:
            assert f'"{flag}"' in source or f"'{flag}'" in source, f"{where}: {flag} is no option of {command[:3]}"
        checked += 1
    assert checked >= 5


def test_every_python_block_compiles_and_its_imports_resolve():
    checked = 0
    for page in PAGES:
        for language, body, line in code_blocks(page):
            if language != "python":
                continue
            tree = compile(body, f"{page.name}:{line}", "exec", ast.PyCF_ONLY_AST)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{page.name}:{line}: {node.module} has no {alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)
            checked += 1
    assert checked >= 2
