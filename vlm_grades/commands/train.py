"""`vlm-grades train`: fine-tune a VLM with GradES (or a baseline stopping rule) into a run folder."""
from __future__ import annotations

import argparse

from vlm_grades.commands.setting_names import GRADES_FLAGS, blame, flag_of

S = argparse.SUPPRESS  # unset flags stay out of the namespace, so YAML values are not overridden
DIVERGED = 3           # exit status of a run whose loss or weights became non-finite


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _tau(value: str):
    return value if value == "auto" else float(value)


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model into a run folder (GradES on by default)",
                       description="Fine-tune nanoVLM or Qwen2.5-VL. With no arguments: the tiny nanoVLM on "
                                   "easy-VQA, GradES on, a run folder under runs/. Settings come from defaults, "
                                   "then --config YAML, then flags.",
                       epilog="Exit status: 0 trained; 2 bad input; 3 the run diverged (non-finite loss or weights: "
                              "final/ is its last finite checkpoint, not evaluated).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=S, help="YAML file of settings (keys as the flags, with underscores); an "
                   "error about one of its values names the file and the key")
    p.add_argument("--resume", action="store_true", default=S,
                   help="continue the unfinished run in --out from its newest complete checkpoint (afresh "
                        "if it has none); a finished run is refused. It keeps the settings it trained with: "
                        "only logging, checkpointing, final-evaluation and feature-cache flags may change")
    p.add_argument("--extend", action="store_true", default=S,
                   help="with --resume and a larger --steps: extend the run's plan (the schedule is re-planned "
                        "over the new total from the next step on; what changes is printed)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=S, help="nanovlm or qwen2.5-vl (default nanovlm)")
    m.add_argument("--preset", default=S, help="nanovlm preset: tiny, smol or 222m (default tiny)")
    m.add_argument("--model-path", default=S, help="checkpoint folder or hub id to start from (nanovlm tiny on "
                   "easy-VQA: the shipped base, stage 1 on the scenes corpus); a local folder is checked before "
                   "the data is read (its config.json, and a nanoVLM's tensor shapes from its weights' header)")
    m.add_argument("--from-scratch", action="store_true", default=S,
                   help="nanovlm: random initialization instead of the shipped base (on easy-VQA: the "
                        "pretraining recipe, 2000 steps, lr 1e-3, half captions)")
    m.add_argument("--lm-weights", default=S, help="nanovlm smol/222m built from the preset (not with --model-path): "
                   "SmolLM2 folder or hub id (default: fetch cache); refused where it would be ignored")
    m.add_argument("--vision-weights", default=S, help="nanovlm smol/222m built from the preset: SigLIP checkpoint "
                   "folder or hub id; refused where it would be ignored")
    m.add_argument("--lora", action="store_true", default=S,
                   help="qwen2.5-vl: train LoRA adapters instead of all weights; the projector trains fully "
                        "beside them unless --lora-targets gives it adapters or --freeze names it")
    m.add_argument("--lora-rank", type=int, default=S, help="with --lora: LoRA rank (default 16)")
    m.add_argument("--lora-alpha", type=int, default=S, help="with --lora: LoRA alpha (default 32)")
    m.add_argument("--lora-dropout", type=float, default=S, help="with --lora: LoRA dropout (default 0.05)")
    m.add_argument("--lora-targets", default=S, help="with --lora: modalities with adapters: language, vision, "
                   "projector, both (language and vision) or all, or a comma list (default language)")
    m.add_argument("--freeze", type=_csv, default=S,
                   help="modalities frozen for the whole run, e.g. vision,projector (something must be left to train)")
    m.add_argument("--min-pixels", type=int, default=S, help="qwen2.5-vl only: minimum image pixels")
    m.add_argument("--max-pixels", type=int, default=S, help="qwen2.5-vl only: maximum image pixels")
    d = p.add_argument_group("data")
    d.add_argument("--task", default=S, help="easyvqa, easyvqa-caption, scenes (pictures the project draws, a "
                   "stage-1 corpus), vqav2, gqa or coco (default easyvqa)")
    d.add_argument("--data", default=S, help="data folder, file or hub id (not needed for easy-VQA)")
    d.add_argument("--split", default=S, help="training split (default train)")
    d.add_argument("--val-split", default=S, help="validation split for classic stopping (easy-VQA: val)")
    d.add_argument("--eval-split", default=S, help="held-out split scored at the end (easy-VQA: test)")
    d.add_argument("--eval-data", default=S, help="data for --eval-split if not --data")
    d.add_argument("--max-samples", type=int, default=S, help="use at most this many training samples")
    d.add_argument("--val-max-samples", type=int, default=S, help="validation samples (default 1024)")
    d.add_argument("--eval-max-samples", type=int, default=S, help="held-out samples (default all)")
    d.add_argument("--prompt", default=S, help="prompt template containing {question}")
    d.add_argument("--mix-task", default=S, help="a second task mixed into training, e.g. easyvqa-caption "
                   "(nanovlm from scratch on easy-VQA: easyvqa-caption); needs --mix-fraction above 0")
    d.add_argument("--mix-data", default=S, help="data of --mix-task if not --data (with --mix-fraction above 0)")
    d.add_argument("--mix-fraction", type=float, default=S,
                   help="share of training samples from --mix-task (nanovlm from scratch on easy-VQA: 0.5; "
                        "0 = off)")
    d.add_argument("--strict", action="store_true", default=S, help="fail on the first bad record")
    d.add_argument("--num-workers", type=int, default=S, help="DataLoader worker processes (default 0)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=S, help="planned optimizer steps (default 2000); under --schedule "
                   "wsd only a cap: GradES decides the length (nanovlm fine-tuning on easy-VQA: wsd, cap 1000)")
    o.add_argument("--batch-size", type=int, default=S, help="per-process batch size (default 64)")
    o.add_argument("--grad-accum", type=int, default=S, help="gradient accumulation steps (default 1)")
    o.add_argument("--lr", type=float, default=S, help="one learning rate for all modalities (default 1e-3; "
                   "nanovlm fine-tuning on easy-VQA: 3e-4)")
    o.add_argument("--lr-vision", type=float, default=S, help="vision encoder learning rate")
    o.add_argument("--lr-projector", type=float, default=S, help="projector learning rate")
    o.add_argument("--lr-language", type=float, default=S, help="language model learning rate")
    o.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (default 0.01)")
    o.add_argument("--warmup", type=float, default=S,
                   help="warmup: fraction of steps (< 1), or a whole number of steps")
    o.add_argument("--schedule", default=S,
                   help="cosine, linear, constant or wsd: warmup-stable-decay, whose cooldown starts when GradES "
                        "judges the model converged (or at --decay-at), so --steps is only a cap (default cosine; "
                        "nanovlm fine-tuning on easy-VQA: wsd)")
    o.add_argument("--decay-at", type=int, default=S,
                   help="wsd: start the cooldown at this step instead of on convergence (for comparisons)")
    o.add_argument("--cooldown", type=float, default=S,
                   help="wsd: the cooldown lasts this fraction of the steps done before it (default 0.4: on the "
                        "fine-tuning default 0.2 annealed 0.07-0.19 points less)")
    o.add_argument("--cooldown-shape", default=S,
                   help="wsd: how the rate falls through the cooldown: linear, or sqrt (1 - sqrt of the cooldown's "
                        "progress: faster at first, longer at a low rate) (default linear)")
    o.add_argument("--clip", type=float, default=S, help="gradient norm clipping, 0 to disable (default 1.0)")
    o.add_argument("--mixed-precision", default=S, help="no or bf16 (default no)")
    o.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
    o.add_argument("--distributed", default=S,
                   help="with several processes (torchrun, accelerate launch): ddp replicates the model, fsdp "
                        "shards parameters, gradients and optimizer state with FSDP2 (default ddp)")
    o.add_argument("--fsdp-cpu-offload", action="store_true", default=S,
                   help="fsdp: keep parameters, gradients and optimizer state on the CPU")
    s = p.add_argument_group("stopping")
    s.add_argument("--stopping", default=S, help="grades, classic or none (default grades)")
    s.add_argument("--grades-preset", default=S, help="'official': reproduce the official grades package")
    s.add_argument("--metric", default=S, help="grad_change (default), grad, weight_change or grad_snr")
    s.add_argument("--snr-window", type=int, default=S, help="grad_snr: checks averaged by the gradient's "
                   "running mean (default 100)")
    s.add_argument("--normalization", default=S, help="mean (default) or sum")
    add_rule_flags(s)
    s.add_argument("--interval", type=int, default=S, help="check every N steps")
    s.add_argument("--classic-every", type=int, default=S, help="classic: validate every N steps (default 100)")
    s.add_argument("--classic-patience", type=int, default=S, help="classic: checks without improvement")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=S, help="run folder, new or empty, checked writable before any work "
                   "(default runs/<model>-<task>-<time>)")
    r.add_argument("--checkpoint-every", type=int, default=S, help="checkpoint every N steps (default 500)")
    r.add_argument("--keep-checkpoints", type=int, default=S, help="checkpoints kept, 0 for all (default 2)")
    r.add_argument("--eval-batch-size", type=int, default=S, help="generation batch size (default 128)")
    r.add_argument("--max-new-tokens", type=int, default=S, help="generated tokens per answer (default 16)")
    r.add_argument("--report-to", type=_csv, default=S, help="trackers: tensorboard, wandb")
    r.add_argument("--log-every", type=int, default=S, help="tracker logging interval in steps")
    r.add_argument("--no-progress", action="store_true", default=S, help="no progress bar")
    r.add_argument("--feature-cache", default=S, metavar="SIZE",
                   help="memory for the frozen-tower feature cache, e.g. 2GB, 512MB, 0 = off (default 2GB): once "
                        "vision and projector are frozen (--freeze or GradES), each image's projector output is "
                        "computed once (a batch's new images together) and reused; a full cache with under 10%% "
                        "hits switches itself off and says so; also used by the final evaluation")
    r.add_argument("--feature-cache-disk", default=S, metavar="SIZE",
                   help="disk tier of the feature cache, e.g. 20GB, 0 = off (default 0): a memory-mapped file per "
                        "process holding the features the memory tier evicts, for data sets larger than RAM; "
                        "reserved on disk when training starts (too little room: one line, before training), "
                        "deleted at the end, rebuilt on resume")
    r.add_argument("--feature-cache-dir", default=S, metavar="DIR",
                   help="folder of the disk tier's files (default: the run folder); tried (a file created, "
                        "written, removed) before any work")
    p.set_defaults(func=run)


def add_rule_flags(group) -> None:
    """The GradES rule's flags (thresholds, grace period, smoothing, patience, stop): shared with `replay`."""
    group.add_argument("--tau", type=_tau, default=S, help="one threshold for every modality, or 'auto' (a "
                       "--tau-<modality> flag overrides it for its modality)")
    group.add_argument("--tau-vision", type=_tau, default=S, help="vision threshold (the other modalities keep "
                       "theirs: --tau, the --config file's, or the default)")
    group.add_argument("--tau-projector", type=_tau, default=S, help="projector threshold (likewise)")
    group.add_argument("--tau-language", type=_tau, default=S, help="language threshold (likewise)")
    group.add_argument("--rho", type=float, default=S, help="auto thresholds: fraction of the grace-period level")
    group.add_argument("--auto-window", type=int, default=S,
                       help="auto thresholds: the level is the mean of the last N grace-period checks (default 100)")
    group.add_argument("--alpha", type=float, default=S,
                       help="grace period: a step (>= 1; default 300), or a fraction (< 1) of --steps")
    group.add_argument("--converge-window", type=int, default=S,
                       help="converged: a modality's statistic fell by less than --converge-tolerance over this "
                            "many checks (default 200)")
    group.add_argument("--converge-tolerance", type=float, default=S,
                       help="converged: the largest fall over the window, in log units (default 0.1, about 10%%)")
    group.add_argument("--converge-patience", type=int, default=S,
                       help="converged: on this many consecutive checks (default 10)")
    group.add_argument("--patience", type=int, default=S, help="consecutive checks below tau before freezing")
    group.add_argument("--smoothing", type=float, default=S, help="exponential smoothing factor of the statistic")
    group.add_argument("--stop-fraction", type=float, default=S, help="stop once this fraction is frozen")
    group.add_argument("--no-finalize", action="store_true", default=S,
                       help="do not freeze a converged modality's norms and embeddings")


def flags_to_settings(args: argparse.Namespace) -> dict:
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "resume", "extend")}
    settings: dict = {}
    grades: dict = {}
    each = {key[4:]: given.pop(key) for key in list(given) if key.startswith("tau_")}
    # --tau first, then the per-modality flags over it (whatever their order on the command line); both are
    # layered over the YAML's and the defaults' thresholds, so a modality no flag names keeps its threshold
    taus = tuple(t for t in (given.pop("tau", None), each or None) if t is not None)
    if taus:
        grades["tau"] = taus[0] if len(taus) == 1 else taus
    for key, value in given.items():
        if key in GRADES_FLAGS:
            grades[GRADES_FLAGS[key]] = value
        elif key == "no_finalize":
            grades["finalize_modalities"] = False
        elif key == "no_progress":
            settings["progress"] = False
        else:
            settings[key] = value
    if grades:
        settings["grades"] = grades
    return settings


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of a `train` command line: defaults, then --config (or the resumed run's config.yaml),
    then the flags given."""
    from vlm_grades.config import TrainConfig
    from vlm_grades.errors import UserError

    layers = []
    if getattr(args, "config", None):
        layers.append(TrainConfig.from_yaml(args.config))
    flags = flags_to_settings(args)
    layers.append(flags)
    config_file = (layers[0], args.config) if getattr(args, "config", None) else (None, None)
    resume = getattr(args, "resume", False)
    if getattr(args, "extend", False) and not resume:
        raise UserError("--extend: only with --resume (it extends a run's planned --steps)")
    if resume:
        from pathlib import Path

        from vlm_grades.training.resume import check_changes, saved_settings

        out = layers[-1].get("out") or (layers[0].get("out") if layers else None)
        if not out:
            raise UserError("--resume: name the run folder with --out")
        # the saved settings win over defaults; flags given now are checked against them
        saved = saved_settings(Path(out), extend=getattr(args, "extend", False))
        layers.insert(0, saved)
    try:
        cfg = TrainConfig.build(*layers)
    except UserError as e:
        raise blame(e, flags, *config_file) from None
    if resume:   # a changed training setting is refused; what an --extend changes is said
        for line in check_changes(TrainConfig.build(saved, {"out": cfg.out}), cfg, Path(out),
                                  extend=getattr(args, "extend", False), flag_of=flag_of):
            print(line)
    return cfg


def run(args: argparse.Namespace) -> int:
    from vlm_grades.training.run import train
    from vlm_grades.training.run_folder import unlock_run

    cfg = config_from_args(args)
    try:
        summary = train(cfg, resume=getattr(args, "resume", False), extend=getattr(args, "extend", False))
    finally:   # also when it failed: the lock of this process goes (a dead process's goes by itself)
        if cfg.out:
            unlock_run(cfg.out)
    from accelerate import PartialState

    if not PartialState().is_main_process:   # one summary per run, not one per process
        return 0
    line = f"run {summary['run']}: {summary['steps']}/{summary['planned_steps']} steps in " \
           f"{summary['wall_time']:.0f} s ({summary['stop_reason']})"
    print(line)
    if summary.get("diverged"):
        import sys

        print(f"vlm-grades train: error: {summary['diverged']}", file=sys.stderr)
        return DIVERGED
    if "eval" in summary:
        print(f"held-out {cfg.task} {cfg.eval_split}: score {summary['eval'].get('score', float('nan')):.2f}")
    return 0
