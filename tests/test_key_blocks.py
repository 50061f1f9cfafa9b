"""A static step's BlockMask (``LeftPadding.step_mask(..., blocks=True)``): the keys it lets
through are the dense mask's, it lists only the blocks holding a visible key, and flex
attention under it gives SDPA's output under the dense mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hat.generation.columns import KEY_BLOCK, LeftPadding
from hat.generation.lean import key_blocks


def block_mask_allows(block_mask, batch: int, count: int) -> torch.Tensor:  # noqa: ANN001
    """[B, count] bool: the keys a BlockMask lets the one query see (listed blocks only,
    then its mask_mod inside them)."""
    num = block_mask.kv_num_blocks[:, 0, 0]
    idx = block_mask.kv_indices[:, 0, 0]
    out = torch.zeros(batch, count, dtype=torch.bool)
    zero = torch.tensor(0)
    for b in range(batch):
        for j in idx[b, : num[b]].tolist():
            for k in range(j * KEY_BLOCK, (j + 1) * KEY_BLOCK):
                bt, kt = torch.tensor(b), torch.tensor(k)
                out[b, k] = bool(block_mask.mask_mod(bt, zero, zero, kt))
    return out


@pytest.mark.parametrize(
    ("n", "first", "window"),
    [
        (torch.tensor(70), torch.tensor(0), None),  # every row at column 70, no window
        (torch.tensor(300), torch.tensor(100), 64),  # a sliding cache: slot 0 holds column 100
        (torch.tensor([40, 130, 90]), torch.tensor(0), 48),  # rows at their own columns
    ],
)
def test_block_mask_lets_through_what_the_dense_mask_does(n, first, window) -> None:
    cols = LeftPadding([30, 10, 45], max_new=400, device=torch.device("cpu"))  # left padding
    count = 4 * KEY_BLOCK
    dense = cols.step_mask(n, first, count, window).dense[:, 0, 0]  # [B, K]
    blocked = cols.step_mask(n, first, count, window, blocks=True).block
    assert torch.equal(block_mask_allows(blocked, 3, count), dense)
    visible = dense.view(3, 4, KEY_BLOCK).any(-1)
    assert torch.equal(blocked.kv_num_blocks[:, 0, 0], visible.sum(-1).int())  # no more
    torch.manual_seed(0)
    q = torch.randn(3, 2, 1, 16)
    k, v = torch.randn(3, 2, count, 16), torch.randn(3, 2, count, 16)
    from torch.nn.attention.flex_attention import flex_attention

    want = F.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None, None])
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=blocked), want)


def test_dense_where_the_cache_is_not_whole_blocks_and_where_not_chosen() -> None:
    cols = LeftPadding([5, 9], max_new=100, device=torch.device("cpu"))
    mask = cols.step_mask(torch.tensor(20), 0, KEY_BLOCK + 3, None, blocks=True)
    assert mask.block is None and mask.dense is not None
    assert key_blocks("default", "cpu", 2) and not key_blocks("default", "cpu", 1)
    assert not key_blocks(None, "cpu", 8) and not key_blocks("reduce-overhead", "cuda", 8)


def test_word_mask_blocks_and_rows_outside_the_group() -> None:
    """The word step's mask over every cache row: a row's words up to its slot; a row outside
    the group (slot -1) lists no block, so flex attention reads nothing of its cache."""
    from hat.generation.hat_engine import word_mask

    slots = torch.tensor([70, -1, 3, 130])
    count = 3 * KEY_BLOCK
    dense = word_mask(slots, count).dense[:, 0, 0]
    blocked = word_mask(slots, count, blocks=True).block
    assert torch.equal(block_mask_allows(blocked, 4, count), dense)
    assert blocked.kv_num_blocks[:, 0, 0].tolist() == [2, 0, 1, 3]
