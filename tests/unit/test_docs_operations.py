"""The operator docs name only things that exist: every repository file, every link (and its
anchor), every ``c2pg`` and ``python -m jobs.…`` command, every ``kuberay/render.py`` call.

Commands are parsed with the real parsers (``engine.cli``'s and each job's
``add_arguments``), so a renamed subcommand or flag breaks this test. Prose may leave out a
required argument (":command:`c2pg sync stop` then ..."); such a command passes if it parses
once the missing ``--config``/``--table`` is supplied. ``kuberay/render.py`` commands are
run for real, writing to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from tests.unit.deploy_validation import ROOT

DOCS = [ROOT / "docs" / "operations.md", ROOT / "docs" / "troubleshooting.md",
        ROOT / "docs" / "capacity.md", ROOT / "kuberay" / "README.md", ROOT / "docker" / "README.md",
        ROOT / "dashboards" / "README.md", ROOT / "docs" / "adr" / "0004-copy-and-merge.md"]
TOP = ("kuberay", "docker", "dashboards", "docs", "engine", "jobs", "serve_app", "examples",
       "scripts", "tests", "benchmarks", ".ci")
_TOPS = "|".join(re.escape(t) for t in TOP)
_PATH = re.compile(rf"(?<![\w/.~$-])((?:{_TOPS})/[A-Za-z0-9_./-]*[A-Za-z0-9_]|cluster\.yaml|pyproject\.toml)")
# Names that look like repository paths but are not: a helm chart, and the file the reader
# creates from docker/.env.example.
NOT_FILES = {"kuberay/kuberay-operator", "docker/.env"}
_LINK = re.compile(r"\]\(([^)\s#]*)(#[^)\s]*)?\)")
_C2PG = re.compile(r"(?:^|[\s`(/]|-- )c2pg ((?:sync|snapshot|reconcile|dlq|health|config|stack)\b[^`|&;\n]*)")
_JOBS = re.compile(r"python -m (jobs\.[a-z_]+)((?: [^`|&;\n]*)?)")
_RENDER = re.compile(r"kuberay/render\.py((?: [^`|&;\n]*)?)")



@pytest.fixture(autouse=True)
def _default_image(monkeypatch):
    """kuberay/render.py takes C2PG_IMAGE as its default image; the committed files do not."""
    monkeypatch.delenv("C2PG_IMAGE", raising=False)

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


def _tokens(text: str) -> list[str]:
    """A command's arguments: comments, placeholders (…) and [optional] brackets dropped."""
    text = text.strip().rstrip("\\").strip().rstrip(".,:)").replace("…", "")
    text = re.sub(r"\[(--[a-z-]+(?: [A-Z_.]+)?)\]", r"\1", text)
    return shlex.split(text, comments=True)


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    for extra in ([], ["x.yaml"], ["--config", "x.yaml"], ["--table", "a.b"], ["--config", "x.yaml", "--table", "a.b"]):
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(argv + extra)
            return True
        except SystemExit:
            continue
    return False


def _cli_parser() -> argparse.ArgumentParser:
    from engine import cli

    return cli._parser()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_file_the_doc_names_exists(doc):
    text = doc.read_text()
    missing = sorted({p for p in _PATH.findall(text) if p not in NOT_FILES and not (ROOT / p).exists()})
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(doc):
    for target, anchor in _LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: link to {target}"
        if anchor and path.suffix == ".md":
            assert anchor[1:] in _anchors(path), f"{doc.name}: {target}{anchor}"


def test_operations_names_the_commands_a_newcomer_needs():
    text = (ROOT / "docs" / "operations.md").read_text()
    for needed in ("helm install kuberay-operator", "kubectl create namespace c2pg",
                   "create secret generic c2pg-secrets", "c2pg-ray-auth",
                   "kubectl apply -f deploy/rayservice.yaml", "python -m jobs.sync", "c2pg sync status",
                   "rayjob-snapshot.yaml", "## Scaling workers", "## Rotating secrets",
                   "## Upgrading without data loss", "## Adding a table to a running pipeline"):
        assert needed in text, needed


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_c2pg_command_parses(doc):
    parser = _cli_parser()
    commands = [_tokens(m) for m in _C2PG.findall(doc.read_text())]
    for argv in commands:
        assert _parses(parser, argv), f"{doc.name}: c2pg {' '.join(argv)}"


def test_operations_runs_c2pg_commands():
    commands = _C2PG.findall((ROOT / "docs" / "operations.md").read_text())
    verbs = {" ".join(_tokens(c)[:2]) for c in commands}
    assert {"sync status", "sync stop", "sync pause", "health --config"} <= verbs


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_job_command_parses_with_the_jobs_own_arguments(doc):
    for module_name, rest in _JOBS.findall(doc.read_text()):
        assert (ROOT / (module_name.replace(".", "/") + ".py")).exists(), module_name
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=module_name)
        module.add_arguments(parser)
        argv = _tokens(rest)
        assert _parses(parser, argv), f"{doc.name}: python -m {module_name} {rest}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_render_command_runs(doc, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("c2pg_kuberay_render", ROOT / "kuberay" / "render.py")
    assert spec and spec.loader
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    for rest in _RENDER.findall(doc.read_text()):
        argv = _tokens(rest)
        if "--out" in argv:
            argv[argv.index("--out") + 1] = str(tmp_path / "out")
        elif not any(a in argv for a in ("--job", "--check")) and argv:
            continue  # an option named in prose, not a full command
        if "--check" in argv or not argv:
            continue  # these rewrite or compare the committed files; covered by the kuberay tests
        assert render.main(argv) == 0, f"{doc.name}: kuberay/render.py {rest}"
        capsys.readouterr()
