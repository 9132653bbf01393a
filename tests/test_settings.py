"""Settings from one source: each declared once on the config dataclasses, both `elm-train` parsers made from them."""
from __future__ import annotations

import dataclasses

import pytest

from model.cli import build_parser, main
from model.finetune.config import FinetuneConfig
from model.train.config import RunConfig, TrainConfig
from model.train.settings import BOTH, run_config, setting, settings_of


def flags_of(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def help_of(kind, capsys) -> str:
    with pytest.raises(SystemExit):
        main((["finetune"] if kind is FinetuneConfig else []) + ["--help"])
    return " ".join(capsys.readouterr().out.split("options:")[1].split())  # the flags' help, unwrapped


def test_every_field_is_a_setting_with_help_or_set_by_the_run():
    for kind in (TrainConfig, FinetuneConfig):
        declared = {s.name for s in settings_of(kind)}
        by_the_run = {f.name for f in dataclasses.fields(kind) if not f.metadata.get("flag", True)}
        assert declared | by_the_run == set(kind.field_names()) and not declared & by_the_run
        assert all(s.help for s in settings_of(kind))
    assert {"gradient_accumulation"} <= {f.name for f in dataclasses.fields(RunConfig) if not f.metadata["flag"]}


def test_a_setting_a_user_gives_cannot_be_declared_without_help():
    with pytest.raises(ValueError, match="needs its help text"):
        setting(3)


def test_finetune_offers_its_own_and_the_shared_settings_only():
    pretraining = {s.flag for s in settings_of(TrainConfig) if s.owner == "pretraining"}
    finetuning = {s.flag for s in settings_of(FinetuneConfig) if s.owner == "finetune"}
    shared = {s.flag for s in settings_of(RunConfig)}
    assert {"--corpus", "--model", "--stream", "--weights", "--eval-batches"} <= pretraining
    assert {"--data", "--method", "--adapter", "--orpo-lambda", "--lora-rank"} <= finetuning
    assert "--instruct-size" not in finetuning  # recorded by a recipe, never given
    finetune_flags = flags_of(build_parser(FinetuneConfig, "f", ""))
    assert shared | finetuning <= finetune_flags and not pretraining & finetune_flags
    assert not finetuning & flags_of(build_parser(TrainConfig, "t", ""))


def test_finetune_help_shows_finetunings_defaults_and_its_required_settings(capsys):
    text = help_of(FinetuneConfig, capsys)
    required = text.split("required (as a flag or in --config):")[1].split("fine-tuning settings:")[0]
    assert "--init-from" in required and "--data" in required and "--corpus" not in text
    assert "--max-lr MAX_LR peak learning rate" in text and "(default: 2e-05)" in text.split("--max-lr")[1][:120]
    assert "(default: 200)" in text.split("--checkpoint-every")[1][:120]
    assert FinetuneConfig().max_lr == 2e-5 and FinetuneConfig().z_loss == 0.0 and FinetuneConfig().steps is None
    assert TrainConfig().max_lr == 5.3e-3 and TrainConfig().checkpoint_every == 500


def test_pretraining_help_says_which_defaults_a_preset_changes(capsys):
    text = help_of(TrainConfig, capsys)
    assert "--data " not in text and "--lora-rank" not in text
    entry = text.split("--sequence-length SEQUENCE_LENGTH ")[1].split(" --")[0]
    assert entry.startswith("tokens per training sequence") and entry.endswith("(default: 2048, or the preset's)")


def test_an_owner_default_goes_to_that_owners_config_only():
    @run_config(BOTH)
    class Shared:
        rate: float = setting(1.0, "a rate", special=2.0)

    @run_config("special")
    class Special(Shared):
        pass

    @run_config("plain")
    class Plain(Shared):
        pass

    assert (Special().rate, Plain().rate) == (2.0, 1.0)
    assert [(s.name, s.owner, s.default) for s in settings_of(Special)] == [("rate", BOTH, 2.0)]


@pytest.mark.parametrize("kind, argv", [
    (TrainConfig, ["--corpus", "no-such-corpus", "--steps", "2"]),
    (FinetuneConfig, ["finetune", "--init-from", "no-such-model", "--data", "d.jsonl", "--steps", "2"])])
def test_a_run_resolves_its_config_once(kind, argv, monkeypatch, tmp_path, capsys):
    calls = []
    original = kind.check_and_derive
    monkeypatch.setattr(kind, "check_and_derive", lambda self, world_size: calls.append(1) or original(self, world_size))
    assert main(argv + ["--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "no-such" in capsys.readouterr().err
    assert len(calls) == 1


def test_a_required_setting_and_a_choice_are_refused_by_flag(tmp_path, capsys):
    assert main(["finetune", "--init-from", "x", "--steps", "2", "--out", str(tmp_path / "a")]) == 2
    assert "--data is required: training records" in capsys.readouterr().err
    assert main(["--corpus", "c", "--sampler-mode", "zigzag", "--out", str(tmp_path / "b")]) == 2
    assert "--sampler-mode must be one of pack, corenet, got 'zigzag'" in capsys.readouterr().err


def test_help_lists_every_command_in_one_line_each_and_a_typo_gets_the_nearest(capsys):
    from model.cli import COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out.split("commands (elm-train COMMAND --help):\n")[1].splitlines()
    assert [line.split()[0] for line in listing] == ["train", "finetune", "eval", "compare", "export", "plot", "ablate"]
    assert list(COMMANDS) == [line.split()[0] for line in listing] and all(len(line) <= 80 for line in listing)
    assert main(["fintune", "--data", "x"]) == 2
    assert capsys.readouterr().err.strip() == "elm-train: unknown command 'fintune'; did you mean `elm-train finetune`?"
    assert main(["zzz"]) == 2
    assert "commands: train, finetune, eval, compare, export, plot" in capsys.readouterr().err


def test_warnings_reach_the_terminal_as_one_line_notes_from_the_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    # the project's own warning, and a library's deprecation as PEFT raises them (a FutureWarning from its module)
    code = ("import sys, warnings; from model import cli; "
            "cli.cli_plot = lambda argv: warnings.warn('the corpus status is \\'partial\\';\\n  sampled as is') or "
            "warnings.warn_explicit('`use_dora` in this form is deprecated;\\n pass it to LoraConfig', FutureWarning, "
            "'peft/tuners/lora/config.py', 12, module='peft.tuners.lora.config') or 0; "
            "sys.argv = ['elm-train', 'plot', 'x']; sys.exit(cli.main())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("elm-train: note: the corpus status is 'partial'; sampled as is\n"
                           "elm-train: note: `use_dora` in this form is deprecated; pass it to LoraConfig\n")


def test_every_flag_of_every_elm_corpus_command_has_help_and_defaults_follow_the_data_root(tmp_path, monkeypatch):
    import argparse
    from pipelines.cli import build_parser
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path / "root"))
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices

    def every(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from every(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield p.prog, action
    missing = [(prog, action.dest) for prog, action in every(parser) if not action.help]
    assert not missing, missing
    helps = {action.dest: action.help for action in commands["inspect"]._actions}
    assert helps["data_dir"] == f"where corpora live (default {tmp_path / 'root' / 'corpora'})"
    assert helps["n"].endswith("(default 3)")
