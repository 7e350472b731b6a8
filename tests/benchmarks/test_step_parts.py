"""benchmarks/step_parts.py at a tiny shape: it quantizes through the CLI, loads, and times every QuantLinear of a
decoding step, the token-table head included."""
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # step_parts imports cpu_formats as a sibling module
spec = importlib.util.spec_from_file_location("step_parts", BENCHMARKS / "step_parts.py")
step_parts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_parts)


def test_times_each_quant_linear_and_the_head(tmp_path, capsys):
    step_parts.main(["--shape", "tiny", "--layers", "1", "--new", "3", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "tiny-1l int4, 2 threads: decode step" in out
    header = out.splitlines()[0]
    for field in ("(one op a layer); op by op", "QuantLinear calls", "the rest", "outputs cached"):
        assert field in header
    lines = out.splitlines()[2:]
    rows = {line.split()[0]: line.split() for line in lines if " again " not in line}
    assert len(lines) == 2 * len(rows)  # each beside its repeat
    for name, shape in [("query_key_value", "128x384"), ("dense", "128x128"), ("dense_h_to_4h", "128x512"),
                        ("dense_4h_to_h", "512x128"), ("word_embeddings", "128x6000")]:
        assert rows[name][1] == shape
    assert rows["word_embeddings"][2] == "int8"  # quantize's default token table
    assert (tmp_path / "tiny-1l" / "int4" / "config.json").is_file()
