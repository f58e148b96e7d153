"""Every command in README.md and docs/*.md still runs, as far as it can without running.

Each line of a fenced ```bash block (``\\`` continuations joined, comments dropped, split at
``&&`` / ``;`` / ``|``) is checked by what it starts with:

- ``granite-train CMD ...`` (also ``.venv/bin/granite-train``, ``python -m granite_train.cli``,
  ``torchrun ... -m granite_train.cli``, ``srun ... granite-train``): composed by the real entry
  point with ``--cfg job`` appended (Hydra prints the config and stops), exit 0 required; for
  ``train`` and ``plan`` the recipe with its overrides also goes through ``load_recipe``, which
  checks every key against the typed recipe sections, as ``train`` does before building a model;
- ``granite-tts ...``, ``python -m data_prep.X ...``, ``python benchmarks/X.py ...``: the
  documented arguments are parsed by the tool's own argparse parser, which is then stopped before
  it runs anything (a misspelt flag or a missing required one fails); a script that has no
  argparse parser is only checked to exist;
- ``bash X.sh``, ``pytest PATH``, ``make TARGET``: the file / target exists;
- ``torchrun -m MOD``, ``pip``, ``apt-get``, ``vllm``, ``curl``, ``git``, ``cat``, ...: only the module or
  script of this repository they name, if any.

Placeholders (``DIR``, ``PATH``) are fine: nothing reads a path. The checks run in one child
interpreter (``python tests/test_docs_commands.py`` reads the jobs as JSON on stdin), so Hydra's
global state and ``sys.argv`` changes stay out of the pytest process; the file takes ~20 s on 2 cores.

The same file checks the relative links of README.md, docs/*.md, recipes/README.md and RESULTS.md:
the file exists, and a ``#anchor`` into a markdown file names one of its headings (GitHub's slugs).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*DOCS, REPO / "recipes" / "README.md", REPO / "RESULTS.md"]

OPERATORS = {"&&", "||", ";", "|", "&"}
CLI_MODULE = "granite_train.cli"
NOT_OURS = {"pip", "pip3", "apt", "apt-get", "sudo", "vllm", "git", "cat", "ls", "mkdir", "cp", "rm", "cd"}
NOT_OURS |= {"export", "echo", "nvidia-smi", "huggingface-cli", "wandb", "nice", "curl"}


# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/finetune.md:42"
    line: str  # the command as written (continuations joined, comment dropped)
    argv: tuple[str, ...]  # one simple command: shell words, environment assignments removed


def fenced_blocks(text: str, language: str = "bash") -> list[tuple[int, list[str]]]:
    """``(line number of the first line, lines)`` of each ```language fenced block."""
    blocks, lines, start, inside = [], text.splitlines(), 0, None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if inside is None and stripped.startswith("```"):
            inside = stripped[3:].strip()
            start, body = number + 1, []
        elif inside is not None and stripped.startswith("```"):
            if inside == language:
                blocks.append((start, body))
            inside = None
        elif inside is not None:
            body.append(line)
    return blocks


def command_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Logical lines of a block: ``\\``-continuations joined, blank and comment-only lines dropped."""
    out, pending, first = [], "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined and not joined.startswith("#"):
            out.append((first, joined))
    return out


def simple_commands(line: str) -> list[list[str]]:
    """Shell words of each simple command of ``line`` (split at operators), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    result = []
    for words in commands:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value before the program
        if words:
            result.append(words)
    return result


def doc_commands(paths: list[Path] = DOCS) -> list[DocCommand]:
    found = []
    for path in paths:
        for start, body in fenced_blocks(path.read_text(encoding="utf-8")):
            for number, line in command_lines(start, body):
                for argv in simple_commands(line):
                    found.append(DocCommand(f"{path.relative_to(REPO)}:{number}", line, tuple(argv)))
    return found


# --------------------------------------------------------------------------------------------------
# what to check for each command
# --------------------------------------------------------------------------------------------------
def program(word: str) -> str:
    return Path(word).name


def plan_check(argv: list[str]) -> dict:
    """The check of one documented command: a job for the child interpreter, or a file/target."""
    name = program(argv[0])
    rest = argv[1:]
    if name == "granite-train":
        return {"kind": "cli", "args": rest}
    if name == "granite-tts":
        return {"kind": "argparse", "entry": "granite-tts", "args": rest}
    if re.fullmatch(r"python[0-9.]*", name):
        return python_check(rest)
    if name == "torchrun":
        if "-m" in rest:
            module, args = rest[rest.index("-m") + 1], rest[rest.index("-m") + 2 :]
            if module == CLI_MODULE:
                return {"kind": "cli", "args": args}
            return {"kind": "module_exists", "module": module}
        scripts = [w for w in rest if w.endswith(".py")]
        return {"kind": "files", "paths": scripts[:1]}
    if name == "srun":  # the first word that is a program we know
        for i, word in enumerate(rest):
            if program(word) in ("granite-train", "granite-tts", "torchrun") or re.fullmatch(
                r"python[0-9.]*", program(word)
            ):
                return plan_check(rest[i:])
        return {"kind": "none"}
    if name in ("bash", "sh"):
        scripts = [w for w in rest if not w.startswith("-")]
        return {"kind": "files", "paths": scripts[:1]}
    if name.endswith(".sh"):
        return {"kind": "files", "paths": [argv[0]]}
    if name == "pytest":
        return {"kind": "files", "paths": [w.split("::")[0] for w in rest if w.startswith("tests/")]}
    if name == "make":
        return {"kind": "make", "targets": [w for w in rest if not w.startswith("-") and "=" not in w]}
    if name in NOT_OURS:
        return {"kind": "none"}
    return {"kind": "unknown", "program": argv[0]}


def python_check(args: list[str]) -> dict:
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module == CLI_MODULE:
            return {"kind": "cli", "args": rest}
        if module == "pytest":
            return plan_check(["pytest", *rest])
        return {"kind": "argparse", "module": module, "args": rest}
    if args and args[0].endswith(".py"):
        return {"kind": "argparse", "script": args[0], "args": args[1:]}
    return {"kind": "unknown", "program": "python " + " ".join(args[:1])}


def check_here(job: dict) -> str | None:
    """Checks that need no child interpreter: an error message, or None."""
    if job["kind"] == "files":
        missing = [p for p in job["paths"] if not (REPO / p).is_file()]
        return f"no such file: {', '.join(missing)}" if missing else None
    if job["kind"] == "make":
        makefile = (REPO / "Makefile").read_text(encoding="utf-8")
        missing = [t for t in job["targets"] if not re.search(rf"^{re.escape(t)}\s*:", makefile, re.M)]
        return f"no make target: {', '.join(missing)}" if missing else None
    if job["kind"] == "unknown":
        return f"{job['program']}: the docs test does not know how to check this program (teach plan_check)"
    return None


# --------------------------------------------------------------------------------------------------
# the child interpreter: every composing / parsing job in one process
# --------------------------------------------------------------------------------------------------
class _Parsed(BaseException):  # a BaseException: no `except Exception` of a tool swallows it
    """Raised in place of running a tool once its parser accepted the documented arguments."""


def _run_cli(args: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from granite_train import cli
    from granite_train.recipes import load_recipe

    GlobalHydra.instance().clear()
    flags = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info")
    cli.main(args if any(a in flags for a in args) else [*args, "--cfg", "job"])
    GlobalHydra.instance().clear()
    command, words = (args[0], _overrides(args[1:])) if args else ("", [])
    if command == "train":
        recipe = [a.split("=", 1)[1] for a in words if a.startswith("recipe=")]
        load_recipe(recipe[0], [a for a in words if not a.startswith("recipe=")])
    elif command == "plan":
        own, overrides = cli._plan_arguments(words)
        recipe = [a.split("=", 1)[1] for a in own if a.startswith("recipe=")]
        load_recipe(recipe[0], overrides)


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
HYDRA_FLAGS_WITH_VALUE |= {"--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def _overrides(args: list[str]) -> list[str]:
    """The key=value words of a command line, Hydra's flags (and their values) left out."""
    out, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif word == "--measure" or not word.startswith("-"):
            out.append(word)
    return out


def _source_of(job: dict) -> tuple[str, Path]:
    """(how to run, file holding its argument parser) of an argparse job."""
    import importlib.util
    from importlib.metadata import entry_points

    if "entry" in job:
        (entry,) = [e for e in entry_points(group="console_scripts") if e.name == job["entry"]]
        spec = importlib.util.find_spec(entry.module)
        return f"entry:{entry.value}", Path(spec.origin)
    if "module" in job:
        spec = importlib.util.find_spec(job["module"])
        if spec is None:
            raise ModuleNotFoundError(f"no module {job['module']}")
        if spec.submodule_search_locations:  # a package: python -m runs its __main__
            main = importlib.util.find_spec(job["module"] + ".__main__")
            if main is None:
                raise ModuleNotFoundError(f"{job['module']} is a package without __main__")
            return f"module:{job['module']}", Path(main.origin)
        return f"module:{job['module']}", Path(spec.origin)
    path = REPO / job["script"]
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {job['script']}")
    return f"script:{path}", path


def _run_argparse(job: dict) -> str:
    import argparse
    import importlib
    import runpy

    how, source = _source_of(job)
    if "parse_args(" not in source.read_text(encoding="utf-8"):
        return "exists (no argument parser: not run)"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    old_argv = sys.argv
    try:
        kind, _, target = how.partition(":")
        sys.argv = [target, *job["args"]]
        if kind == "entry":
            module, _, func = target.partition(":")
            getattr(importlib.import_module(module), func)(job["args"])
        elif kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except _Parsed:
        return "arguments parsed"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = old_argv
    raise RuntimeError("the tool returned without parsing its arguments")


def _run_job(job: dict) -> dict:
    import contextlib
    import importlib.util
    import io
    import traceback

    out, code, note = io.StringIO(), 0, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if job["kind"] == "cli":
                _run_cli(job["args"])
                note = "composed"
            elif job["kind"] == "argparse":
                note = _run_argparse(job)
            elif job["kind"] == "module_exists":
                if importlib.util.find_spec(job["module"]) is None:
                    raise ModuleNotFoundError(f"no module {job['module']}")
                note = "module found"
        except SystemExit as stop:  # sys.exit(0), sys.exit(2), sys.exit("message")
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code)
                code = 1
        except BaseException:  # noqa: BLE001 - reported with its traceback
            traceback.print_exc()
            code = 1
    return {"code": code, "note": note, "output": out.getvalue()[-4000:]}


def _child() -> None:
    import logging
    import os
    import warnings

    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    jobs = json.loads(sys.stdin.read())
    results = [_run_job(job) for job in jobs]
    sys.__stdout__.write(json.dumps(results))


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
COMMANDS = doc_commands()


@pytest.fixture(scope="module")
def child_results() -> dict[tuple[str, ...], dict]:
    """Every job that needs an interpreter, run once in one child process."""
    jobs, keys = [], []
    for command in COMMANDS:
        job = plan_check(list(command.argv))
        if job["kind"] in ("cli", "argparse", "module_exists") and command.argv not in keys:
            jobs.append(job)
            keys.append(command.argv)
    done = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(zip(keys, json.loads(done.stdout), strict=True))


def test_the_docs_have_commands():
    assert len(COMMANDS) > 40
    assert all(path.is_file() for path in DOCS)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.argv[0]}" for c in COMMANDS])
def test_documented_command_runs(command: DocCommand, child_results):
    job = plan_check(list(command.argv))
    error = check_here(job)
    assert error is None, f"{command.where}: {command.line}\n{error}"
    if command.argv in child_results:
        result = child_results[command.argv]
        assert result["code"] == 0, f"{command.where}: {command.line}\n{result['output']}"


def test_extraction_joins_continuations_and_drops_comments():
    text = (
        "intro\n```bash\n# a comment\nA=1 .venv/bin/granite-train train recipe=x \\\n"
        "    'data.train.sources=[{name: m, path: p}]'   # trailing\n\n"
        "bash scripts/a.sh && .venv/bin/python -m data_prep.segment --help\n```\n"
        "```\nnot bash\n```\n"
    )
    (start, body), *_ = fenced_blocks(text)
    lines = command_lines(start, body)
    assert [n for n, _ in lines] == [4, 7]
    assert simple_commands(lines[0][1]) == [
        [".venv/bin/granite-train", "train", "recipe=x", "data.train.sources=[{name: m, path: p}]"]
    ]
    assert [c[0] for c in simple_commands(lines[1][1])] == ["bash", ".venv/bin/python"]
    assert plan_check(["torchrun", "--nproc_per_node", "8", "-m", CLI_MODULE, "train", "recipe=x"]) == {
        "kind": "cli",
        "args": ["train", "recipe=x"],
    }


# --------------------------------------------------------------------------------------------------
# links
# --------------------------------------------------------------------------------------------------
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    keep = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN"]
    return "".join(keep).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out, inside = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not inside:
            slug = github_slug(match.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def links(path: Path) -> list[tuple[int, str]]:
    found, inside = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            found += [(number, target) for target in LINK.findall(line)]
    return found


@pytest.mark.parametrize("path", LINKED, ids=[str(p.relative_to(REPO)) for p in LINKED])
def test_relative_links_resolve(path: Path):
    broken = []
    for number, target in links(path):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}:{number}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{path.name}:{number}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_github_slugs():
    assert github_slug("Issue 15: one clear house — behaviour unchanged, measured") == (
        "issue-15-one-clear-house--behaviour-unchanged-measured"
    )
    assert (
        github_slug("Data pipeline (`benchmarks/data_pipeline.py`)")
        == "data-pipeline-benchmarksdata_pipelinepy"
    )


if __name__ == "__main__":
    _child()
