"""Teacher Intervention: the schedule, the replaced signals, and no teacher signal at the end."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.ptq.layers import find_blocks
from qscale.qat import QATRecipeConfig, prepare
from qscale.qat.intervention import InterventionConfig, first_intervened, intervene, teacher_block_inputs


def test_schedule_hands_blocks_back_from_the_bottom_and_ends_with_none():
    cfg = InterventionConfig(handback=0.5)
    firsts = [first_intervened(s, 100, 4, cfg) for s in range(100)]
    assert firsts[0] == 1  # every block but the first (whose input is the embeddings) intervened
    assert firsts == sorted(firsts) and set(firsts) == {1, 2, 3, 4}
    assert all(f == 4 for f in firsts[50:])  # after the hand-back span: no intervention
    full = InterventionConfig(handback=1.0)  # the hand-back takes every step but the last
    assert first_intervened(98, 100, 4, full) == 3 and first_intervened(99, 100, 4, full) == 4
    with pytest.raises(QscaleError):
        InterventionConfig(handback=0)


def _block_inputs(model, ids):
    with teacher_block_inputs(model) as seen, torch.no_grad():
        model(input_ids=ids)
    return list(seen)


def test_intervened_blocks_see_the_teachers_inputs_and_only_while_intervening(llama):
    teacher = copy.deepcopy(llama)
    prepare(llama, QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    t_in = _block_inputs(teacher, ids)
    s_in = _block_inputs(llama, ids)
    assert not torch.allclose(s_in[1], t_in[1])  # quantization error propagates without intervention
    n = len(find_blocks(llama)[1])
    with intervene(llama, t_in, first=1):
        seen = _block_inputs(llama, ids)
    assert all(torch.equal(seen[i], t_in[i]) for i in range(1, n))
    with intervene(llama, t_in, first=n):  # the schedule's end: no teacher signal at all
        after = _block_inputs(llama, ids)
    assert all(torch.equal(a, b) for a, b in zip(after, s_in))
    assert all(torch.equal(a, b) for a, b in zip(_block_inputs(llama, ids), s_in))  # hooks removed
