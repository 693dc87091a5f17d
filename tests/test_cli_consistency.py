"""The command line as a whole: one spelling per option, whole short helps, complete group help,
no option accepted and then ignored, shell completion."""
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from modtrain.cli import main

MODTRAIN = str(Path(sys.executable).parent / "modtrain")
OLD_SPELLINGS = {"--force", "--gpus-per-trial", "--cpus-per-trial"}


def _walk(group: click.Group, path: tuple[str, ...] = ()):
    """(path, parent group, command) of every command and group under ``group``."""
    for name, command in group.commands.items():
        yield (*path, name), group, command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


COMMANDS = list(_walk(main))


def test_the_walk_sees_every_command():
    names = {" ".join(path) for path, _, _ in COMMANDS}
    assert {"run", "status", "recipes", "data generate", "report cells", "report compare", "tune"} <= names


@pytest.mark.parametrize("width", [80, 60])
def test_short_help_is_never_cut(width):
    """The short help a group lists for each command is a whole sentence at any terminal width (click
    cuts a long first sentence with '...', and ends it at 'Fig.' in '(paper Fig. 13)')."""
    for path, parent, command in COMMANDS:
        visible = [n for n, c in parent.commands.items() if not c.hidden]
        limit = max(width - 2, 50) - 6 - max(len(n) for n in visible)  # as click's format_commands
        text = command.get_short_help_str(limit)
        assert text.endswith(".") and not text.endswith("...") and text.count("(") == text.count(")"), (path, text)
    for group in [()] + [path for path, _, c in COMMANDS if isinstance(c, click.Group)]:
        result = CliRunner().invoke(main, [*group, "--help"], terminal_width=width)
        assert result.exit_code == 0 and "..." not in result.output.split("Commands:")[1], (group, result.output)


def test_every_group_lists_all_its_subcommands():
    runner = CliRunner()
    groups = [((), main)] + [(path, c) for path, _, c in COMMANDS if isinstance(c, click.Group)]
    for path, group in groups:
        shown = runner.invoke(main, [*path, "--help"]).output
        listed = [line.split()[0] for line in shown.split("Commands:")[1].splitlines() if line.strip()]
        assert listed == sorted(group.commands), path
        if path:  # a group's own description names each of its commands (report omitted cells)
            assert all(name in group.help for name in group.commands), (path, group.help)


def test_one_spelling_for_each_option():
    seen: dict[str, set[str]] = {}
    for path, _, command in COMMANDS:
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert not set(param.opts) & OLD_SPELLINGS, (path, param.opts)
                for opt in param.opts:
                    seen.setdefault(opt, set()).add(" ".join(path))
    assert {"data generate", "report compare", "report depth", "tune"} <= seen["--fresh"]
    assert {"run", "tune"} <= seen["--gpus-per-job"] and {"run", "tune"} <= seen["--cpus-per-job"]
    # --address: the same default (none) and the same words everywhere, up to what 'none' means
    address = {" ".join(path): p for path, _, c in COMMANDS for p in c.params if "--address" in p.opts}
    assert set(address) == {"run", "tune", "report correlation"}
    assert {p.default for p in address.values()} == {None}
    assert len({p.help.split("[default")[0] for p in address.values()}) == 1


def test_no_option_is_accepted_and_ignored(tmp_path):
    runner = CliRunner()
    for args in (["plan", "--recipe", "nmn-typed", "--device", "cpu"], ["tune", "find", "--device", "cpu"],
                 ["status", "--recipe", "nmn-typed", "--device", "cpu"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and "No such option '--device'" in result.output, args
    workdir = tmp_path / "w"
    result = runner.invoke(main, ["run", "--recipe", "nmn-typed", "--workdir", str(workdir), "--gpus-per-job", "1"])
    assert result.exit_code == 2 and "--gpus-per-job and --cpus-per-job size the jobs on Ray: give --address" \
        in result.output
    result = runner.invoke(main, ["run", "--recipe", "nmn-typed", "--workdir", str(workdir), "--address", "local",
                                  "--device", "cpu"])
    assert result.exit_code == 2 and "on Ray (--address) --gpus-per-job does" in result.output
    assert not workdir.exists()


def test_old_spellings_still_work_and_say_the_new_one(tmp_path):
    runner = CliRunner()
    data = ["data", "generate", str(tmp_path / "d"), "--images", "2", "--questions-per-image", "2", "--workers", "0"]
    assert runner.invoke(main, data).exit_code == 0
    result = runner.invoke(main, [*data, "--force"])
    assert result.exit_code == 0 and "warning: --force is now --fresh" in result.stderr
    result = runner.invoke(main, [*data, "--fresh"])
    assert result.exit_code == 0 and "warning" not in result.stderr
    tune = main.commands["tune"]
    ctx = tune.make_context("tune", ["find", "--gpus-per-trial", "1", "--cpus-per-trial", "2"])
    assert ctx.params["gpus_alias"] == 1.0 and ctx.params["cpus_alias"] == 2
    assert "--gpus-per-trial" not in runner.invoke(main, ["tune", "--help"]).output


def test_shell_completion_is_documented_and_works():
    assert '_MODTRAIN_COMPLETE=bash_source modtrain' in CliRunner().invoke(main, ["--help"]).output
    env = {**os.environ, "_MODTRAIN_COMPLETE": "bash_complete", "COMP_WORDS": "modtrain sta", "COMP_CWORD": "1"}
    result = subprocess.run([MODTRAIN], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["plain,status"]
