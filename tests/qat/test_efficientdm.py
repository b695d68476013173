"""EfficientDM: scale-aware QALoRA definition, self-generated data (no corpus read), distillation lowers its loss."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qscale.commands.common
import qscale.data.batches
import qscale.data.corpus
import qscale.data.streams
from qscale.qat import QATRecipeConfig, convert, prepare, qat_finetune, quant_layers
from qscale.qat.efficientdm import (
    EfficientDMOptions,
    QALoRAWeightQuantizer,
    sample_sequences,
    self_generated_batches,
)
from qscale.qat.lsq import lsq_fake_quantize
from qscale.quant import QuantizedLinear, QuantSpec


@pytest.fixture
def trained(llama, batches):
    """The tiny Llama after a short full-precision fit of the structured batches (a peaked distribution)."""
    opt = torch.optim.AdamW(llama.parameters(), lr=1e-2)
    for step in range(30):
        b = batches(step)
        loss = F.cross_entropy(llama(input_ids=b[:, :-1]).logits.flatten(0, 1), b[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return llama.eval()


def test_scale_aware_qalora_definition():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.1
    spec = QuantSpec(3, True, "group", 32, grid="full")
    q = QALoRAWeightQuantizer(w, spec, rank=4, alpha=8.0)
    with torch.no_grad():
        q.A.normal_()
    expected = lsq_fake_quantize(w + q.step.mean() * 2.0 * (q.A @ q.B), spec, q.step, q.grad_scale)
    assert torch.allclose(q(None), expected)
    assert torch.equal(q.freeze(None).dequantize(), q(None).detach())


def test_sampling_is_seeded_and_follows_the_model(trained):
    a = sample_sequences(trained, 8, 20, seed=3)
    assert torch.equal(a, sample_sequences(trained, 8, 20, seed=3)) and a.shape == (8, 20)
    # the fitted model continues arithmetic sequences: most sampled steps repeat the previous stride
    d = (a[:, 1:] - a[:, :-1]) % 64
    assert (d[:, 1:] == d[:, :-1]).float().mean() > 0.5


def test_data_free_distillation_reads_no_corpus(trained, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a corpus loader was called")

    for module, name in ((qscale.data.corpus, "load_corpus"), (qscale.data.streams, "load_corpus"),
                         (qscale.data.streams, "load_token_streams"), (qscale.commands.common, "load_token_streams"),
                         (qscale.data.batches, "train_batch"), (qscale.data.batches, "calibration_windows"),
                         (np, "fromfile"), (np, "memmap"), (np, "load")):
        monkeypatch.setattr(module, name, forbidden)
    teacher = copy.deepcopy(trained)
    cfg = QATRecipeConfig("efficientdm", w_bits=2, a_bits=16, group_size=32, rank=4,
                          options=EfficientDMOptions(samples=32))
    batches = self_generated_batches(teacher, cfg.options, batch_size=8, seq_len=24, seed=0)
    losses = qat_finetune(trained, cfg, batches, steps=20, lr=1e-2, warmup_steps=2, teacher=teacher)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    trainable = {n.split(".")[-1] for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable == {"A", "B", "step"}
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = trained(input_ids=ids).logits
        convert(trained)
        assert torch.equal(trained(input_ids=ids).logits, before)  # LoRA merged into the integer codes
    assert all(not hasattr(m, "A") for m in trained.modules() if isinstance(m, QuantizedLinear))


def test_efficientdm_quantizes_activations_with_lsq(llama):
    prepare(llama, QATRecipeConfig("efficientdm", w_bits=4, a_bits=4, group_size=32))
    assert all(type(m.act_quantizer).__name__ == "LSQActQuantizer" for m in quant_layers(llama).values())
