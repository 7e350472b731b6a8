"""Training curves: ``loss.png`` from a run's ``loss_log.jsonl`` (sft.LossLog): the training loss and the learning
rate over steps, and the held-out loss where the run evaluated.

Drawn on matplotlib's Agg canvas through the object API (``Figure``, not pyplot): no display is needed and no
global figure state is touched, so it is safe at the end of training in any process.
"""
from __future__ import annotations

from pathlib import Path

from paddle_belle import jsonl
from paddle_belle.checkpoint import atomic_path

LOSS_LOG = "loss_log.jsonl"  # written by sft.LossLog
LOSS_PNG = "loss.png"


def read_curves(run_dir) -> dict[str, list]:
    """``step``, ``loss``, ``learning_rate`` (one entry per logged training step) and ``eval_step``, ``eval_loss``
    (one per evaluation). A step logged twice (a run resumed from a checkpoint before it) counts once, as last
    logged."""
    path = Path(run_dir) / LOSS_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {LOSS_LOG} (is it a `paddle-belle train` output directory?)")
    train, held_out = {}, {}
    for n, r in enumerate(jsonl.read(path, "log record"), 1):
        if not isinstance(r.get("step"), int) or not isinstance(r.get("loss", r.get("eval_loss")), (int, float)):
            raise ValueError(f"{path}: record {n} has no integer \"step\" with a \"loss\" or \"eval_loss\"")
        if "loss" in r:
            train[r["step"]] = r
        else:
            held_out[r["step"]] = r["eval_loss"]
    if not train:
        raise ValueError(f"{path}: no training step logged")
    steps, evals = sorted(train), sorted(held_out)
    return {"step": steps, "loss": [train[s]["loss"] for s in steps],
            "learning_rate": [train[s].get("learning_rate") for s in steps],
            "eval_step": evals, "eval_loss": [held_out[s] for s in evals]}


def figure(curves: dict, title: str = ""):
    """The loss (left axis; held-out loss as points joined) and learning rate (right axis) over steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines = ax.plot(curves["step"], curves["loss"], color="C0", label="training loss")
    if curves["eval_step"]:
        lines += ax.plot(curves["eval_step"], curves["eval_loss"], "o-", color="C2", label="held-out loss")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    rates = [(s, lr) for s, lr in zip(curves["step"], curves["learning_rate"]) if lr is not None]
    if rates:
        lr_ax = ax.twinx()
        lines += lr_ax.plot(*zip(*rates), color="C1", alpha=0.8, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    return fig


def write_loss_png(run_dir, out=None) -> Path:
    """Draw ``run_dir``'s curves into ``out`` (default run_dir/loss.png), written atomically."""
    out = Path(out) if out else Path(run_dir) / LOSS_PNG
    fig = figure(read_curves(run_dir), Path(run_dir).resolve().name)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
