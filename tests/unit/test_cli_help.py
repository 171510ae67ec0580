"""``c2pg --help`` and every command's help say what it does and show how to call it, and a
pipeline file comes from ``--config`` or ``$C2PG_PIPELINE_CONFIG``.

The tree is walked through argparse's own structure (``_subparsers._group_actions`` and
their ``choices``), so a command added later without help fails here. The expectations —
the prog path of each command, the variable's name, the error's wording — are written out
in this file, not taken from ``engine.cli``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from pathlib import Path

import pytest

from engine import cli
from jobs import reconcile as reconcile_job
from jobs import snapshot as snapshot_job

ENV = "C2PG_PIPELINE_CONFIG"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("c2pg",)):
    """(command words, parser) for ``parser`` and every parser below it, depth first."""
    yield path, parser
    for action in _subcommand_actions(parser):
        for name, child in action.choices.items():
            yield from _walk(child, (*path, name))


def _subcommand_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    group = parser._subparsers
    if group is None:
        return []
    return [a for a in group._group_actions if isinstance(a, argparse._SubParsersAction)]


def _tree() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(_walk(cli.build_parser()))


def _ids(tree) -> list[str]:
    return [" ".join(path) for path, _ in tree]


TREE = _tree()


def _example_lines(epilog: str) -> list[str]:
    """The commands of an epilog that start with ``c2pg``, without a trailing comment."""
    return [line.strip().split("  #")[0].strip() for line in epilog.splitlines() if line.strip().startswith("c2pg ")]


def test_the_tree_has_the_commands_users_know():
    # A floor, not the whole list: losing one of these would break docs and scripts.
    names = set(_ids(TREE))
    assert {"c2pg stack up", "c2pg stack down", "c2pg stack status", "c2pg stack logs", "c2pg stack env",
            "c2pg config check", "c2pg snapshot", "c2pg reconcile", "c2pg sync start", "c2pg sync stop",
            "c2pg sync status", "c2pg sync pause", "c2pg sync resume", "c2pg dlq list", "c2pg dlq show",
            "c2pg dlq replay", "c2pg health"} <= names


@pytest.mark.parametrize("path,parser", TREE, ids=_ids(TREE))
def test_every_command_describes_itself(path, parser):
    assert parser.prog == " ".join(path)
    description = (parser.description or "").strip()
    assert len(description.split()) >= 6, f"{parser.prog}: a sentence or two of what it does"
    doc = (cli.__doc__ or "").strip()
    assert description != doc and description not in doc and doc.splitlines()[0] not in description


@pytest.mark.parametrize("path,parser", TREE, ids=_ids(TREE))
def test_every_command_shows_examples_of_itself(path, parser):
    epilog = (parser.epilog or "").strip()
    assert epilog.startswith(("example:", "examples:")), f"{parser.prog}: epilog {epilog[:40]!r}"
    examples = _example_lines(epilog)
    assert examples, f"{parser.prog}: no `c2pg ...` example line"
    for line in examples:
        assert tuple(shlex.split(line)[:len(path)]) == path, f"{parser.prog}: example {line!r}"
    # The raw formatter keeps one example a line in the rendered help.
    rendered = parser.format_help()
    for line in examples:
        assert line in rendered


@pytest.mark.parametrize("path,parser", TREE, ids=_ids(TREE))
def test_every_argument_and_subcommand_has_help(path, parser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{parser.prog}: {name} has no help"
    for action in _subcommand_actions(parser):
        listed = {a.dest: a.help for a in action._choices_actions}
        assert set(listed) == set(action.choices), parser.prog
        assert all(h and h.strip() for h in listed.values()), f"{parser.prog}: {listed}"


def test_every_example_parses(monkeypatch):
    """The examples are real commands: each parses (without the variable set)."""
    monkeypatch.delenv(ENV, raising=False)
    for path, parser in TREE:
        for line in _example_lines(parser.epilog or ""):
            argv = shlex.split(line)[1:]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    cli.build_parser().parse_args(argv)
                except SystemExit as exc:
                    assert exc.code == 0 and "--help" in argv, f"{' '.join(path)}: {line!r}: {err.getvalue()}"


def test_top_level_help_is_not_the_module_docstring():
    text = cli.build_parser().format_help()
    doc = cli.__doc__ or ""
    first = doc.strip().splitlines()[0]
    assert first not in text
    assert "this module only wires it to the terminal" not in text
    for word in ("PostgreSQL", "Cassandra", "snapshot", "sync", "reconcile", "Debezium", "Kafka", "stack"):
        assert word in text, word
    assert "c2pg stack up" in text and "c2pg sync start --config examples/pipeline.local.yaml" in text
    assert Path(cli.__file__).parents[1].joinpath("examples", "pipeline.local.yaml").exists()


# --- the pipeline file: --config, else $C2PG_PIPELINE_CONFIG -------------------------------

# Each command that reads a pipeline: its words, the other arguments it needs, and the flag
# that names the file (config check takes the file as an optional positional).
PIPELINE_COMMANDS = [
    ("sync start", [], "--config"), ("sync stop", [], "--config"), ("sync status", [], "--config"),
    ("sync pause", [], "--config"), ("sync resume", [], "--config"), ("sync heal", [], "--config"),
    ("sync keep", [], "--config"),
    ("snapshot", ["--table", "demo.users"], "--config"), ("reconcile", ["--table", "demo.users"], "--config"),
    ("health", [], "--config"), ("dlq list", [], "--config"), ("dlq show", ["7"], "--config"),
    ("dlq replay", [], "--config"), ("config check", [], None),
]
IDS = [words for words, _, _ in PIPELINE_COMMANDS]


def _parse(words: str, rest: list[str], parser: argparse.ArgumentParser | None = None) -> Path:
    """The pipeline file ``c2pg <words> <rest>`` parses to."""
    args = (parser or cli.build_parser()).parse_args(words.split() + rest)
    return args.file if words == "config check" else args.config


def test_the_list_covers_every_command_with_a_config_option():
    with_config = {" ".join(path[1:]) for path, parser in TREE
                   if any("--config" in a.option_strings for a in parser._actions)}
    assert with_config == {words for words, _, flag in PIPELINE_COMMANDS if flag}


@pytest.mark.parametrize("words,rest,flag", PIPELINE_COMMANDS, ids=IDS)
def test_pipeline_file_defaults_to_the_variable_read_at_parse_time(words, rest, flag, monkeypatch):
    parser = cli.build_parser()  # built before the variable is set: it is read when parsing
    monkeypatch.setenv(ENV, "/etc/c2pg/pipeline.yaml")
    assert _parse(words, rest, parser) == Path("/etc/c2pg/pipeline.yaml")
    monkeypatch.setenv(ENV, "/elsewhere/other.yaml")
    assert _parse(words, rest, parser) == Path("/elsewhere/other.yaml")


@pytest.mark.parametrize("words,rest,flag", PIPELINE_COMMANDS, ids=IDS)
def test_a_given_pipeline_file_wins_over_the_variable(words, rest, flag, monkeypatch):
    monkeypatch.setenv(ENV, "/etc/c2pg/pipeline.yaml")
    given = [flag, "mine.yaml"] if flag else ["mine.yaml"]
    assert _parse(words, rest + given) == Path("mine.yaml")


@pytest.mark.parametrize("words,rest,flag", PIPELINE_COMMANDS, ids=IDS)
def test_no_pipeline_file_is_a_usage_error_naming_both_ways(words, rest, flag, monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        _parse(words, rest)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: c2pg {words} ")
    assert f"c2pg {words}: error: " in err and "no pipeline file" in err
    assert f"pass {flag or ''} FILE or set {ENV}".replace("  ", " ") in err


def test_an_empty_variable_is_no_pipeline_file(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "")
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["health"])
    assert exc.value.code == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("name,module", [("snapshot", snapshot_job), ("reconcile", reconcile_job)])
def test_python_m_jobs_take_the_same_default(name, module, monkeypatch, capsys):
    """``python -m jobs.<name>`` (a Ray job) builds its parser from the same add_arguments."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{name}")
    module.add_arguments(parser)
    monkeypatch.setenv(ENV, "/etc/c2pg/pipeline.yaml")
    assert parser.parse_args(["--table", "demo.users"]).config == Path("/etc/c2pg/pipeline.yaml")
    monkeypatch.delenv(ENV)
    with pytest.raises(SystemExit) as exc:
        module.main(["--table", "demo.users"])  # fails while parsing, before any work
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m jobs.{name}: error: " in err and "--config" in err and ENV in err


# --- c2pg stack env ------------------------------------------------------------------------


def test_stack_env_exports_the_stacks_ray_token_path_before_the_auth_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("C2PG_STACK_DIR", str(tmp_path))
    assert cli.main(["stack", "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # docs/local-stack.md: the stack's secrets live in <stack>/secrets/.
    token_line = f"export RAY_AUTH_TOKEN_PATH={tmp_path / 'secrets' / 'ray-auth-token'}"
    assert token_line in lines
    assert lines.index("export RAY_AUTH_MODE=token") == lines.index(token_line) + 1
