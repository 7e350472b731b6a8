import numpy as np
import paddle
import pytest

from paddle_belle.quant import QuantConfig, QuantLinear, dequantize, pack, unpack
from paddle_belle.quant.format import quantize_rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_pack_unpack_round_trip(bits, rows):
    codes = np.random.RandomState(bits + rows).randint(0, 1 << bits, (rows, 5)).astype(np.uint8)
    packed = pack(codes, bits)
    per_byte = {2: 4, 3: 2, 4: 2, 8: 1}[bits]
    assert packed.dtype == np.uint8 and packed.shape == (-(-rows // per_byte), 5)
    np.testing.assert_array_equal(unpack(packed, bits, rows), codes)


def test_int4_packs_two_per_byte_low_nibble_first():
    codes = np.array([[1, 15], [2, 0], [3, 7]], np.uint8)
    np.testing.assert_array_equal(pack(codes, 4), [[0x21, 0x0F], [0x03, 0x07]])


def test_pack_refuses_out_of_range_codes():
    with pytest.raises(ValueError, match="4-bit"):
        pack(np.array([[16]], np.uint8), 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_paddle_unpacking_matches_numpy(bits):
    """QuantLinear's own (Paddle) unpacking of a block, at group-aligned offsets, equals the numpy reference."""
    config = QuantConfig(bits=bits, group_size=8, method="rtn")
    codes = np.random.RandomState(bits).randint(0, 1 << bits, (21, 6)).astype(np.uint8)
    layer = QuantLinear.from_codes(codes, np.ones([3, 6], np.float32), None, config)
    np.testing.assert_array_equal(layer.codes().numpy(), codes)
    np.testing.assert_array_equal(layer.codes(8, 21).numpy(), codes[8:21])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_error_is_at_most_half_a_step(bits, sym):
    # 200 input rows in groups of 64: the last group is partial (8 rows), like SmolLM2's 576 = 4 x 128 + 64.
    w = paddle.to_tensor(np.random.RandomState(0).standard_normal((200, 16)).astype(np.float32))
    config = QuantConfig(bits=bits, group_size=64, method="rtn", sym=sym)
    codes, scales, zeros = quantize_rtn(w, config)
    assert codes.shape == (200, 16) and scales.shape == zeros.shape == (4, 16)
    assert codes.max() <= (1 << bits) - 1
    deq = dequantize(codes, scales, zeros, 64)
    step = scales[np.arange(200) // 64]
    err = np.abs(deq - w.numpy())
    assert (err <= step / 2 * (1 + 1e-5)).all(), (err / step).max()
    if sym:  # the symmetric grid is PaddleSlim's: step = max|w| / (2^(bits-1) - 1) per group and channel
        absmax = np.stack([np.abs(w.numpy()[g * 64 : (g + 1) * 64]).max(0) for g in range(4)])
        np.testing.assert_allclose(scales, absmax / ((1 << (bits - 1)) - 1), rtol=1e-6)
        assert (zeros == 1 << (bits - 1)).all()


def test_rtn_error_shrinks_with_bits_and_smaller_groups():
    w = paddle.to_tensor(np.random.RandomState(1).standard_normal((256, 32)).astype(np.float32))

    def error(bits, group_size):
        config = QuantConfig(bits=bits, group_size=group_size, method="rtn")
        codes, scales, zeros = quantize_rtn(w, config)
        return np.abs(dequantize(codes, scales, zeros, group_size) - w.numpy()).mean()

    assert error(8, 128) < error(4, 128) < error(3, 128) < error(2, 128)
    assert error(4, 32) < error(4, 128) < error(4, -1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=5), "bits must be one of 2, 3, 4, 8"),
    (dict(bits=1), "bits must be one of"),
    (dict(bits=4, group_size=7), "multiple of 2"),
    (dict(bits=2, group_size=6), "multiple of 4"),
    (dict(method="awq"), "method must be"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_config_round_trips_and_names_its_source():
    config = QuantConfig(bits=3, group_size=64, method="rtn", sym=False, act_order=True)
    assert QuantConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="ckpt/config.json: .*unknown field.*weight_quantize_algo"):
        QuantConfig.from_dict({"weight_quantize_algo": "weight_only_int8"}, "ckpt/config.json")
    with pytest.raises(ValueError, match="ckpt/config.json: bits must be"):
        QuantConfig.from_dict({"bits": 6}, "ckpt/config.json")
