"""loss.png: a training run draws its loss, learning rate and held-out loss; `paddle-belle plot-loss` redraws it."""
import json
from pathlib import Path

from PIL import Image
from reference import tiny_llama_dir
from test_cli import run_cli

from paddle_belle.train import load_config, train
from paddle_belle.train.plot import figure, read_curves

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "fixtures" / "belle" / "school_math_40.jsonl"


def test_training_draws_loss_png_from_its_log(tmp_path):
    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    out, held_out = tmp_path / "run", tmp_path / "held_out.jsonl"
    held_out.write_text("".join(DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    config = load_config(ROOT / "configs" / "sft" / "tiny-cpu.yaml", [
        "--model", str(tmp_path / "base"), "--train_data", str(DATA), "--eval_data", str(held_out),
        "--training.output_dir", str(out), "--training.num_train_epochs", "1",
        "--training.evaluation_strategy", "steps", "--training.eval_steps", "2"])
    trainer = train(config)
    with Image.open(out / "loss.png") as png:
        png.verify()
        assert png.format == "PNG"

    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    evals = [r["step"] for r in log if "eval_loss" in r]
    assert steps == list(range(1, trainer.state.global_step + 1))  # logging_steps 1
    assert evals == [2, 4, 5] and trainer.state.global_step == 5  # every 2 steps, and once more at the end
    # the data given to the plot: one point per logged step, and per evaluation
    ax, lr_ax = figure(read_curves(out)).axes
    (loss_line, eval_line), (lr_line,) = ax.get_lines(), lr_ax.get_lines()
    assert list(loss_line.get_xdata()) == steps and list(loss_line.get_ydata()) == [r["loss"] for r in log if "loss" in r]
    assert list(eval_line.get_xdata()) == evals and len(eval_line.get_ydata()) == len(evals)
    assert list(lr_line.get_xdata()) == steps and list(lr_line.get_ydata()) == [r["learning_rate"] for r in log
                                                                               if "loss" in r]

    redrawn = run_cli("plot-loss", str(out), "--out", str(tmp_path / "again.png"))
    assert redrawn.returncode == 0 and redrawn.stdout.strip() == f"wrote {tmp_path / 'again.png'}"
    with Image.open(tmp_path / "again.png") as png:
        assert png.format == "PNG" and png.size == (800, 450)


def test_plot_loss_names_what_is_wrong(tmp_path):
    out = run_cli("plot-loss", str(tmp_path))
    assert out.returncode == 1 and out.stderr.strip() == (
        f"paddle-belle plot-loss: error: {tmp_path}: no loss_log.jsonl (is it a `paddle-belle train` output "
        "directory?)")
    (tmp_path / "loss_log.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": "x"}\n')
    out = run_cli("plot-loss", str(tmp_path))
    assert out.returncode == 1 and out.stderr.strip().endswith(
        "loss_log.jsonl: record 2 has no integer \"step\" with a \"loss\" or \"eval_loss\"")
    assert not (tmp_path / "loss.png").exists() and not list(tmp_path.glob(".tmp-*"))
