"""`elm-train`: pretrain, fine-tune, evaluate, compare, export and plot OpenELM runs. It parses and prints only.

    elm-train --corpus NAME --model PRESET [--steps N] [--out DIR] [--resume]
    elm-train export RUN_DIR --format mlx|hf --out DIR
    elm-train plot RUN_DIR
    elm-train eval MODEL --tasks NAMES
    elm-train compare RUN_DIR... [--report DIR]
    elm-train finetune --init-from MODEL --data TRAIN --method sft|dpo|rso|orpo --adapter none|lora|dora
    elm-train ablate SPEC.yaml [--out DIR] [--parallel N] [--ray-address ADDR]

The work is in `model.pretrain` and `model.finetune` (the runs, on `model.train`), `model.eval` and
`model.export`; `python -m model.cli` is `elm-train` (torchrun starts it that way).
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import textwrap
from pathlib import Path

from model.export import FORMATS, QUANT_BITS, export, is_chat_export, mlx_generate_command
from model.hf_folder import DTYPES, HFFolderError
from model.presets import preset_settings
from model.source import SourceError
from model.train.config import ConfigError, RunConfig, TrainConfig, TrainError, load_yaml_config
from model.train.distributed import launched_world_size, process_settings, start_cluster, stop_cluster
from model.train.metrics import CURVES_FILE, plot_run
from model.pretrain import build_trainer
from model.train.run import prepare_run, run_folder_held
from model.train.settings import BOTH, settings_of
from model.train.trainer import NonFiniteLoss, TrainResult


# The commands of elm-train: what each does, in one line (the bare `elm-train ...` is `train`).
COMMANDS = {
    "train": "pretrain on a built corpus or a live stream (the default)",
    "finetune": "fine-tune: sft, dpo, rso or orpo; all weights or LoRA/DoRA",
    "eval": "score a model on lm-evaluation-harness tasks",
    "compare": "runs side by side: losses, tokens, accuracies; HTML",
    "export": "a run as MLX or Hugging Face weights, or its adapter",
    "plot": "draw a run's loss and learning-rate curves",
    "ablate": "proxies on candidate corpora, several seeds; a report with intervals",
}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line itself (tests pass argv and keep Python's warnings)
        from corpus.console import warnings_as_notes
        warnings_as_notes("elm-train")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else "train"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"; did you mean `elm-train {near[0]}`?" if near else f"; commands: {', '.join(COMMANDS)}"
        print(f"elm-train: unknown command {command!r}{hint}", file=sys.stderr)
        return 2
    handlers = {"train": cli_train, "finetune": cli_finetune, "eval": cli_eval, "compare": cli_compare,
                "export": cli_export, "plot": cli_plot, "ablate": cli_ablate}
    return handlers[command](argv)


# ---------------------------------------------------------------- elm-train [train]

def build_parser(kind: type[RunConfig], prog: str, description: str, epilog: str | None = None
                 ) -> argparse.ArgumentParser:
    """The flags of a run of `kind`, one per setting it declares (`model.train.settings`), with its help and default;
    required settings in their own group."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", help="run config: a mapping of the settings below (underscored names)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    per_preset = preset_settings() if kind is TrainConfig else set()
    required = p.add_argument_group("required (as a flag or in --config)")
    own = p.add_argument_group("fine-tuning settings" if kind.OWNER == "finetune" else f"{kind.OWNER} settings")
    shared = p.add_argument_group("settings of every run")
    for s in settings_of(kind):
        group = required if s.required else shared if s.owner == BOTH else own
        help_text = s.help + (f"; one of {', '.join(s.choices)}" if s.choices else "")
        if s.default is not None and not s.required:
            help_text += f" (default: {s.default}, or the preset's)" if s.name in per_preset else \
                f" (default: {s.default})"
        if s.type is bool:
            group.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(s.flag, dest=s.name, type=s.parse or s.type, default=None, help=help_text,
                               metavar=s.metavar)
    return p


def cli_train(argv: list[str]) -> int:
    parser = build_parser(TrainConfig, "elm-train [train]", textwrap.fill(
        "Pretrain OpenELM on a built corpus (or a live stream) with CoreNet's recipe. Every setting below can also "
        "be given in a YAML run config (--config); flags win."), epilog="commands (elm-train COMMAND --help):\n" +
        "\n".join(f"  {name:<10}{text}" for name, text in COMMANDS.items()))
    return _run_training(parser.parse_args(argv), TrainConfig, build_trainer)


def cli_finetune(argv: list[str]) -> int:
    from model.finetune.config import FinetuneConfig
    from model.finetune.run import build_finetune_trainer
    parser = build_parser(FinetuneConfig, "elm-train finetune", textwrap.fill(
        "Fine-tune an OpenELM (a Hugging Face-format folder or a run) on local records or a datasets name: an "
        "objective (--method) with full weights or LoRA/DoRA adapters (--adapter), with the chosen recipe's values "
        "as defaults (docs/finetune.md). Every setting can also be given in a YAML run config (--config); flags win."))
    args = parser.parse_args(argv)
    if args.steps is not None and args.epochs is not None:
        parser.error("give --steps or --epochs, not both")
    return _run_training(args, FinetuneConfig, build_finetune_trainer)


def _run_training(args: argparse.Namespace, kind: type[RunConfig], build) -> int:
    """Resolve the run's settings once, start the cluster, build the run with `build` and train it; print the end."""
    names = kind.field_names()
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cluster = cfg = None
    try:
        yaml_values = load_yaml_config(args.config, kind) if args.config else {}
        plan = prepare_run(yaml_values, flags, args.resume, launched_world_size(), kind)
        cfg = plan.config
        cluster = start_cluster(cfg)
        if plan.nothing_to_resume and cluster.is_main:
            print(f"elm-train: nothing to resume in {plan.run_dir}; starting a new run", file=sys.stderr)
        for path, why in plan.passed_over if cluster.is_main else ():
            print(f"elm-train: {path}: {why}; resuming from {plan.resume_from.name}", file=sys.stderr)
        with run_folder_held(plan.run_dir, cluster.is_main), process_settings(cfg):
            trainer = build(cfg, plan.run_dir, plan.resume_from, cluster)
            for note in trainer.notes if cluster.is_main else ():
                print(f"elm-train: note: {note}", file=sys.stderr)
            result = trainer.train()
        if cluster.is_main:
            print_summary(result)
        return 0
    except NonFiniteLoss as e:
        print(f"elm-train: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        where = f" in {cfg.out}" if cfg is not None else ""
        print(f"elm-train: interrupted; rerun the same command with --resume to continue from the last "
              f"checkpoint{where}", file=sys.stderr)
        return 130
    except (TrainError, ConfigError) as e:
        print(f"elm-train: {e}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            stop_cluster(cluster)


def print_summary(result: TrainResult) -> None:
    """The end of a run: its losses and speed, then the mixture it achieved against its targets."""
    run_dir = result.run_dir
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    speed = f"{result.tokens_per_s:,.0f} tokens/s" if result.tokens_per_s else "nothing left to train"
    print(f"done: {run_dir}  train loss {result.train_loss:.4f}  val loss {val}  {speed}; "
          f"curves in {run_dir / CURVES_FILE}")
    if result.mixture:
        print(f"  {'source':<28}{'target':>8}{'achieved':>10}")
        for name, row in result.mixture.items():
            if row["target"] == 0 and row["achieved"] == 0:
                continue
            print(f"  {name:<28}{row['target'] * 100:>7.2f}%{row['achieved'] * 100:>9.2f}%")


# ---------------------------------------------------------------- elm-train plot

def cli_plot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="elm-train plot", description="Draw a run's loss and LR curves to PNG.")
    p.add_argument("run_dir", help="the run folder whose metrics.jsonl to draw")
    p.add_argument("--out", default=None, help=f"PNG path (default RUN_DIR/{CURVES_FILE})")
    args = p.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"elm-train plot: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


# ---------------------------------------------------------------- elm-train eval

def build_eval_parser() -> argparse.ArgumentParser:
    from corpus.tasks.sets import TASK_SETS
    from model.eval.harness import BACKENDS
    p = argparse.ArgumentParser(prog="elm-train eval", description=(
        "Evaluate a model with lm-evaluation-harness: a run (its newest checkpoint), a checkpoint, an export or "
        "any Hugging Face-format OpenELM folder (Apple's release with --tokenizer), or an MLX export with "
        "--backend mlx. Task data comes through the `datasets` library (docs/eval.md)."))
    p.add_argument("model", metavar="MODEL", help="run folder, checkpoints/step_N, a Hugging Face-format folder, "
                   "or an MLX export (--backend mlx)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated, or a set: "
                   + ", ".join(TASK_SETS))
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the set's, or the task's)")
    p.add_argument("--limit", default=None, metavar="N", help="at most N examples per task (a positive integer)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--backend", choices=list(BACKENDS), default="torch",
                   help="; ".join(f"{name}: {b.help}" for name, b in BACKENDS.items()) + " (default torch)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N or mps; "
                   "with --backend mlx: auto, cpu or gpu")
    p.add_argument("--no-bos", dest="bos", action="store_false",
                   help="do not prepend BOS to contexts (Apple evaluated with it)")
    p.add_argument("--include-path", default=None, help="a folder of extra task YAMLs in lm-eval's format")
    p.add_argument("--tokenizer", default=None,
                   help="SentencePiece .model (path/URI or 'default'); default: the run's, or tokenizer.model in MODEL")
    p.add_argument("--step", type=int, default=None, help="evaluate this checkpoint step of a run")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a PEFT adapter folder (a fine-tuning checkpoint's adapter/, or an export --format "
                        "peft-adapter) to apply to MODEL, its base (torch backend)")
    p.add_argument("--out", default=None, help="write lm-eval's results JSON here")
    p.add_argument("--log-samples", action="store_true", help="keep every request and answer in --out")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own warnings and progress bars")
    return p


def cli_eval(argv: list[str]) -> int:
    args = build_eval_parser().parse_args(argv)
    if args.limit is not None and not (args.limit.isdigit() and int(args.limit) > 0):
        print(f"elm-train eval: error: --limit must be a positive integer (examples per task), got {args.limit!r}",
              file=sys.stderr)
        return 2
    from model.eval.harness import EvalError, evaluate, record_in_run
    try:
        evaluation = evaluate(args.model, args.tasks, num_fewshot=args.num_fewshot,
                              limit=int(args.limit) if args.limit is not None else None,
                              batch_size=args.batch_size, device=args.device, add_bos=args.bos,
                              include_path=args.include_path, log_samples=args.log_samples,
                              tokenizer=args.tokenizer, step=args.step, backend=args.backend, adapter=args.adapter,
                              verbose=args.verbose)
    except (EvalError, SourceError, HFFolderError, ValueError) as e:
        print(f"elm-train eval: error: {e}", file=sys.stderr)
        return 2
    print_eval_table(evaluation.results, evaluation.preset, args.tasks)
    recorded = record_in_run(evaluation)
    if recorded is not None:
        print(f"recorded for elm-train compare: {recorded}")
    if args.out:
        from lm_eval.utils import handle_non_serializable
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(evaluation.results, indent=2, default=handle_non_serializable) + "\n")
        print(f"results: {out}")
    return 0


def print_eval_table(results: dict, preset: str | None, tasks: str) -> None:
    """acc and acc_norm (%, with stderr) per task, and bpb (bits per byte of the gold continuation, lower is better)
    where a multiple-choice task gives it; Apple's numbers beside them for a preset and a named set; the items of
    each task the run's corpus held, where it was checked for them."""
    from model.eval.contamination import contamination_cell
    from model.eval.tasks import published_row
    published = published_row(preset, tasks.strip())
    contamination = results.get("contamination") or {}
    marks = contamination.get("tasks") or {}
    rows = results.get("results", {})
    with_bpb = any(isinstance(row.get("bpb,none"), float) for row in rows.values())
    head = f"{'task':<28}{'n-shot':>7}{'acc':>16}{'acc_norm':>16}" + (f"{'bpb':>18}" if with_bpb else "")
    if published:
        head += f"{preset + ' (Apple)':>24}"
    if marks:
        head += f"{'contaminated':>22}"
    print(head)
    shown, bpbs = [], []
    for task, row in rows.items():
        cells = [_score_cell(row, metric, 100, 2, 16) for metric in ("acc", "acc_norm")]
        line = f"{task:<28}{results.get('n-shot', {}).get(task, '-')!s:>7}{cells[0]}{cells[1]}"
        if with_bpb:
            line += _score_cell(row, "bpb", 1, 3, 18)
        if published:
            line += f"{published.get(task, float('nan')):>24.2f}" if task in published else f"{'-':>24}"
        if marks:
            line += f"{contamination_cell(marks.get(task)):>22}"
        print(line)
        best = row.get("acc_norm,none", row.get("acc,none"))
        if isinstance(best, float):
            shown.append(best)
        if isinstance(row.get("bpb,none"), float) and task not in results.get("group_subtasks", {}):
            bpbs.append(row["bpb,none"])
    if shown:
        line = f"{'average (acc_norm where given)':<51}{100 * sum(shown) / len(shown):>16.2f}"
        if with_bpb:
            line += f"{sum(bpbs) / len(bpbs):>18.3f}" if bpbs else f"{'-':>18}"
        if published:
            line += f"{published['average']:>24.2f}"
        print(line)
    if with_bpb:
        print("bpb: bits per byte of the gold continuation, the mean over items; lower is better (average: over the "
              "tasks, groups left out)")
    if marks:
        print(f"contaminated: items of the task found in the run's corpus {contamination['corpus']} (elm-corpus "
              f"contamination); removed: found and dropped by its build (decontaminate); -: not checked")
    elif "unreadable" in contamination:
        print(f"contamination: the run's corpus {contamination['corpus']} cannot be read, so no task is marked "
              f"({contamination['unreadable']})")


def _score_cell(row: dict, metric: str, scale: float, digits: int, width: int) -> str:
    """A metric of lm-eval's row (`,none` filter) with its stderr, right-aligned in `width`; `-` when absent."""
    value, err = row.get(f"{metric},none"), row.get(f"{metric}_stderr,none")
    if not isinstance(value, float):
        return f"{'-':>{width}}"
    cell = f"{scale * value:6.{digits}f}"
    if isinstance(err, float):
        cell += f" +- {scale * err:5.{digits}f}"
    return f"{cell:>{width}}"


# ---------------------------------------------------------------- elm-train compare

def cli_compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="elm-train compare", description=(
        "Several runs side by side: loss, tokens and the newest benchmark scores of each (--eval-tasks, or "
        "elm-train eval of a checkpoint): accuracy, or bpb with --metric bpb."))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders to put side by side")
    p.add_argument("--report", metavar="DIR", help="write an HTML page with PNG charts to DIR")
    from model.eval.compare import (METRICS, compare_runs, contaminated, contamination_notes, scores, task_names,
                                    write_report)
    p.add_argument("--metric", choices=list(METRICS), default="acc",
                   help="the task scores shown: " + "; ".join(f"{k}: {v}" for k, v in METRICS.items())
                        + " (default acc)")
    args = p.parse_args(argv)
    try:
        summaries = compare_runs(args.runs)
    except FileNotFoundError as e:
        print(f"elm-train compare: error: {e}", file=sys.stderr)
        return 2
    tasks = task_names(summaries, args.metric)
    print(f"{'run':<24}{'preset':<14}{'corpus':<18}{'tokens':>12}{'train loss':>12}{'val loss':>10}"
          + "".join(f"{t[:14]:>16}" for t in tasks))
    for s in summaries:
        val = f"{s.val_loss:.4f}" if s.val_loss is not None else "-"
        shown = scores(s, args.metric)
        cells = [(f"{shown[t]:.4f}" if args.metric == "bpb" else f"{100 * shown[t]:.2f}")
                 + ("*" if contaminated(s, t) else "") if t in shown else "-" for t in tasks]
        print(f"{s.name[:23]:<24}{str(s.preset)[:13]:<14}{str(s.corpus)[:17]:<18}{s.tokens:>12,}{s.train_loss:>12.4f}"
              f"{val:>10}" + "".join(f"{cell:>16}" for cell in cells))
    notes = contamination_notes(summaries)
    if notes:
        print("*: items of the task were found in the run's corpus (elm-train eval; K of N: items found of the "
              "task's items):")
        for note in notes:
            print(f"  {note}")
    if args.report:
        print(f"report: {write_report(summaries, args.report, args.metric)}")
    return 0


# ---------------------------------------------------------------- elm-train export

def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elm-train export",
                                description="Export a run or a Hugging Face-format OpenELM folder to MLX or HF "
                                            "format, or an adapter run's adapter for mlx-lm or PEFT.")
    p.add_argument("source", metavar="RUN_DIR", help="run folder, one of its checkpoints/step_N, or an HF-format folder")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="mlx",
                   help="mlx: for mlx-lm; hf: the layout of Apple's Hugging Face release (default mlx); "
                        "mlx-adapter, peft-adapter: an adapter run's adapter alone, for mlx-lm or PEFT")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weight dtype (default float32)")
    p.add_argument("--quantize", type=int, choices=QUANT_BITS, default=None, help="bits, with mlx-lm's quantization")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64, help="quantization group size (default 64)")
    p.add_argument("--tokenizer", default=None,
                   help="SentencePiece .model (path/URI or 'default'); default: the run's, or tokenizer.model in SOURCE")
    p.add_argument("--step", type=int, default=None, help="export this checkpoint step instead of the latest")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def cli_export(argv: list[str]) -> int:
    args = build_export_parser().parse_args(argv)
    try:
        out = export(args.source, args.out, fmt=args.fmt, dtype=args.dtype, quantize=args.quantize,
                     group_size=args.group_size, tokenizer_spec=args.tokenizer, step=args.step, force=args.force)
    except (SourceError, HFFolderError) as e:  # ExportError is a SourceError
        print(f"elm-train export: error: {e}", file=sys.stderr)
        return 2
    quant = f", {args.quantize}-bit" if args.quantize else ""
    print(f"wrote {out} ({args.fmt}, {args.dtype}{quant})")
    if args.fmt == "mlx":
        print(f"try: {mlx_generate_command(out, chat_model=is_chat_export(out))}")
    return 0



# ---------------------------------------------------------------- elm-train ablate

def cli_ablate(argv: list[str]) -> int:
    from model.ablate.run import run_ablation
    from model.ablate.spec import AblationSpecError, load_spec
    p = argparse.ArgumentParser(prog="elm-train ablate", description=textwrap.fill(
        "Train a proxy model on each candidate corpus of SPEC (variants) with several seeds, score each with "
        "elm-train eval, and write OUT/report.json and OUT/report.html: every metric's mean and 95% interval over "
        "seeds, the differences between variants with bootstrap intervals, and a ranking (docs/ablate.md). "
        "Rerunning the same command continues: nothing finished is redone."))
    p.add_argument("spec", help="the ablation spec (YAML)")
    p.add_argument("--out", default=None, help="folder of the ablation (default ablations/<spec name>)")
    p.add_argument("--parallel", type=int, default=None, help="trials at once on this machine, the CPU threads "
                   "split among them (default: one per CPU, at most the trials left)")
    p.add_argument("--ray-address", default=None, help="run each trial as a Ray task on this cluster (host:port); "
                   "OUT must be on storage every node sees")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="with --ray-address: GPUs each trial asks for")
    args = p.parse_args(argv)
    if args.parallel is not None and args.parallel < 1:
        p.error("--parallel must be at least 1")
    try:
        spec = load_spec(args.spec)
    except AblationSpecError as e:
        for problem in e.problems:
            print(f"elm-train ablate: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("ablations") / spec.name)
    report = run_ablation(spec, out, args.parallel, args.ray_address, args.gpus_per_trial,
                          say=lambda line: print(line, flush=True))
    aggregate = report["aggregate"]
    print(f"ranking by {aggregate['over']} {aggregate['metric']} "
          f"({'higher' if aggregate['higher_is_better'] else 'lower'} is better):")
    for row in report["ranking"]:
        if row["value"] is None:
            print(f"  -. {row['variant']:<24} no finished trial")
            continue
        interval = "" if row["ci_low"] is None else f"  [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        print(f"  {row['rank']}. {row['variant']:<24} {row['value']:.4f}{interval}")
    failed = [t for t in report["trials"] if t["status"] != "finished"]
    for t in failed:
        print(f"failed: {t['variant']} seed {t['seed']}: {t['error']} (log {t['log']})")
    print(f"report: {out / 'report.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
