"""models/base.py: the Layer call without Paddle's mode checks keeps hooks working."""
import paddle
from reference import our_logits, tiny_bloom, tiny_llama

from paddle_belle.quant.linear import decoder_blocks


def test_hooks_still_run_on_our_layers():
    """A forward pre-hook and post-hook on our layers (what PaddleSlim and users register) run and take effect."""
    ids = [[5, 6, 7]]
    for model in (tiny_bloom(4, 0.5)[1], tiny_llama(0.5)[1]):
        blocks = decoder_blocks(model)
        plain = our_logits(model, ids).logits
        seen = []
        pre = blocks[0].register_forward_pre_hook(lambda layer, inputs: seen.append("pre"))
        post = blocks[-1].register_forward_post_hook(lambda layer, inputs, out: out * 0)
        zeroed = our_logits(model, ids).logits
        pre.remove()
        post.remove()
        assert seen == ["pre"]
        assert not paddle.allclose(plain, zeroed)  # the last block's output was replaced by the hook's
        assert paddle.allclose(plain, our_logits(model, ids).logits)  # and removed hooks are gone
