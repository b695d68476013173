"""EfficientDM: scale-aware QALoRA definition, self-generated data (no corpus read), distillation lowers its loss."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qscale.cli.pipeline
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

    for module, name in (
        (qscale.data.corpus, "load_corpus"),
        (qscale.data.streams, "load_corpus"),
        (qscale.data.streams, "load_token_streams"),
        (qscale.cli.pipeline, "load_token_streams"),
        (qscale.data.batches, "train_batch"),
        (qscale.data.batches, "calibration_windows"),
        (np, "fromfile"),
        (np, "memmap"),
        (np, "load"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    teacher = copy.deepcopy(trained)
    cfg = QATRecipeConfig(
        "efficientdm", w_bits=2, a_bits=16, group_size=32, rank=4, options=EfficientDMOptions(samples=32)
    )
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


# Golden values from ThisisBillhe/EfficientDM @ 293e212b8c62c356a6da44d6550cd296c87b9f63,
# quant_scripts/quant_layer.py: ``UniformAffineQuantizer`` (channel-wise, learned delta) and the linear-layer weight
# path of ``QuantModule_intnlora.forward`` (``orig_weight + loraB(loraA(E)).T``, then the weight quantizer) copied
# verbatim into a scratch folder outside the project and run on CPU. Their zero point is set to 2^(b−1) = 8, which
# makes their grid [0, 15] − 8 the symmetric full grid used here; loraA.weight = golden.wave(2, 8, a=0.29, b=0.3)·0.3,
# loraB.weight = golden.wave(4, 2, a=0.53, b=0.7)·0.02, W0 = golden.matrix(4, 8, 0.05), delta below.
AUTHORS_DELTA = [0.008, 0.01, 0.012, 0.006]
AUTHORS_WQ = [
    0.032,
    0.056,
    0.056,
    0.024,
    0.016,
    0,
    -0.056,
    -0.048,
    0.02,
    0.05,
    0.02,
    -0.02,
    -0.03,
    -0.06,
    0.03,
    0.02,
    -0.012,
    0.024,
    -0.012,
    -0.036,
    0.012,
    0.024,
    0.06,
    -0.036,
    -0.006,
    0.03,
    -0.03,
    -0.006,
    0.03,
    0.006,
    -0.048,
    0.036,
]
AUTHORS_GRAD_LORA_A = [
    0.018593129,
    0.021288671,
    0.021175962,
    0.021896424,
    0.044968553,
    0.035031069,
    0.025524678,
    0.046127528,
    0.009447854,
    -0.0066068447,
    0.01873973,
    0.026003687,
    0.019216591,
    0.026864145,
    0.039894927,
    0.032433901,
]
AUTHORS_GRAD_LORA_B = [1.3064623, -1.0305147, 1.6720921, -0.71995485, 1.4508671, -0.68555903, -0.23723771, 0.48582649]
AUTHORS_GRAD_DELTA = [4.3036237, 0.48323607, 0.030141115, -0.55620623]


def test_qalora_matches_the_authors_quant_module(golden):
    """Same merged-then-quantized weight and the same LoRA gradients (ours: ``ΔW = c·A·B`` with ``c = s̄·α/r``, so
    ``A = loraB.weight/c`` and ``∂A = c·∂loraB``); the step gradient is theirs times LSQ's gradient scale g (they
    apply none)."""
    q = QALoRAWeightQuantizer(
        golden.matrix(4, 8, 0.05), QuantSpec(4, True, "channel", None, grid="full"), rank=2, alpha=4.0
    )
    c = float(torch.tensor(AUTHORS_DELTA).mean()) * q.lora_scale
    with torch.no_grad():
        q.step.copy_(torch.tensor(AUTHORS_DELTA)[:, None])
        q.A.copy_(golden.wave(4, 2, a=0.53, b=0.7) * 0.02 / c)
        q.B.copy_(golden.wave(2, 8, a=0.29, b=0.3) * 0.3)
    wq = q(None)
    (wq * golden.wave(4, 8, a=0.11, b=0.2)).sum().backward()
    assert torch.allclose(wq, torch.tensor(AUTHORS_WQ).reshape(4, 8), atol=1e-7)
    assert torch.allclose(q.B.grad.flatten(), torch.tensor(AUTHORS_GRAD_LORA_A), rtol=1e-5, atol=1e-8)
    assert torch.allclose((q.A.grad / c).flatten(), torch.tensor(AUTHORS_GRAD_LORA_B), rtol=1e-5)
    assert torch.allclose(q.step.grad.flatten() / q.grad_scale, torch.tensor(AUTHORS_GRAD_DELTA), rtol=1e-5, atol=1e-6)
