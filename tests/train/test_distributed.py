"""Two data-parallel processes on CPU under paddle.distributed.launch (gloo), through the same train() entry."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from reference import tiny_belle_dir

from paddle_belle.checkpoint import load_state_dict

HERE = Path(__file__).parent


def test_two_process_data_parallel_ranks_end_identical_and_trained(tmp_path):
    tiny_belle_dir(tmp_path / "base", hidden_size=64, std=0.02)
    config = yaml.safe_load((HERE.parents[1] / "configs" / "sft" / "tiny-cpu.yaml").read_text())
    config.update(model=str(tmp_path / "base"), train_data=[str(HERE.parent / "fixtures" / "belle" / "school_math_40.jsonl")])
    config["training"].update(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"),
         str(HERE / "dp_worker.py"), str(tmp_path / "c.yaml"), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + logs
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in logs  # 4 x 2 ranks x 1
    rank0, rank1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    start = load_state_dict(tmp_path / "base")
    assert set(rank0.files) == set(rank1.files) == set(start)
    for name in rank0.files:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    assert all(not np.allclose(rank0[name], start[name]) for name in start if "layernorm" not in name)
    saved = load_state_dict(tmp_path / "out")  # rank 0 saved the final model once
    np.testing.assert_array_equal(saved["bloom.h.0.mlp.dense_h_to_4h.weight"], rank0["bloom.h.0.mlp.dense_h_to_4h.weight"])
