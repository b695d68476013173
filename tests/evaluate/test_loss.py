import math

import torch
import torch.nn.functional as F

from qscale.data.batches import eval_windows
from qscale.evaluate import evaluate
from qscale.models import build_model


def test_evaluate_matches_direct_cross_entropy_and_is_batch_invariant(streams):
    model = build_model("xs", streams.vocab_size, max_seq_len=64, seed=0)
    windows = eval_windows(streams.val, 6, 32)
    r = evaluate(model, windows, batch_size=4)
    with torch.no_grad():
        logits = model(input_ids=windows[:, :-1]).logits
    direct = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert math.isclose(r.loss, direct, rel_tol=1e-5)
    assert math.isclose(r.ppl, math.exp(r.loss)) and r.n_tokens == 6 * 32 and r.per_window.shape == (6,)
    # random init: close to uniform over the vocabulary
    assert abs(r.loss - math.log(streams.vocab_size)) < 0.3
    r1 = evaluate(model, windows, batch_size=1)
    assert abs(r1.loss - r.loss) < 1e-5
