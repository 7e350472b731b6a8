"""Packed rows: each sample attends to itself only and restarts its positions, so it computes what it would alone."""
import datasets
import numpy as np
import paddle
import pytest
from reference import our_logits, tiny_bloom, tiny_llama

from paddle_belle.data import IGNORE, pack

SAMPLES = [  # (input_ids, labels), lengths 5, 3, 6, 4
    ([5, 6, 7, 8, 9], [IGNORE, IGNORE, 8, 9, 2]),
    ([10, 11, 12], [IGNORE, 12, 2]),
    ([20, 21, 22, 23, 24, 25], [IGNORE, IGNORE, IGNORE, 24, 25, 2]),
    ([30, 31, 32, 33], [31, 32, 33, 2]),
]


def packed(max_length):
    ds = datasets.Dataset.from_dict({"input_ids": [s[0] for s in SAMPLES], "labels": [s[1] for s in SAMPLES]})
    return pack(ds, max_length)


def test_greedy_packing_in_order():
    rows = packed(10)
    assert rows["attention_mask"] == [[1] * 5 + [2] * 3, [1] * 6 + [2] * 4]
    assert rows["position_ids"] == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]]
    assert rows["input_ids"][0] == SAMPLES[0][0] + SAMPLES[1][0] and rows["labels"][1] == SAMPLES[2][1] + SAMPLES[3][1]


@pytest.mark.parametrize("make", [tiny_bloom, tiny_llama], ids=["bloom", "llama"])
def test_a_packed_sample_computes_what_it_computes_alone(make):
    _, model = make(std=0.5)
    rows = packed(10)
    width = max(len(r) for r in rows["input_ids"])
    pad = lambda r, v: r + [v] * (width - len(r))  # noqa: E731  right padding, as the collator does
    batch = {k: paddle.to_tensor([pad(r, IGNORE if k == "labels" else 0) for r in rows[k]]) for k in rows.column_names}
    with paddle.no_grad():
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                    labels=batch["labels"])
    starts = [(0, 0), (0, 5), (1, 0), (1, 6)]
    losses, count = 0.0, 0
    for (ids, labels), (row, start) in zip(SAMPLES, starts):
        alone = our_logits(model, [ids]).logits.numpy()[0]
        np.testing.assert_allclose(out.logits.numpy()[row, start:start + len(ids)], alone, rtol=1e-5, atol=1e-4)
        n = sum(label != IGNORE for label in labels)
        losses += float(our_logits(model, [ids], labels=[labels]).loss) * n
        count += n
    np.testing.assert_allclose(float(out.loss), losses / count, rtol=1e-5)
