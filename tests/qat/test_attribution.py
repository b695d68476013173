import math

import pytest
import torch
from torch import nn

from qscale.qat import QATRecipeConfig, input_stats, kurtosis, prepare
from qscale.quant import QuantSpec, fake_quantize


class _Table(nn.Module):
    """Feeds rows of a fixed table to a linear layer: the layer's input is known exactly."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.fc = nn.Linear(table.shape[1], 4)

    def forward(self, input_ids):
        return self.fc(self.table[input_ids])


@pytest.mark.parametrize(("dist", "kurt"), [("normal", 3.0), ("laplace", 6.0), ("uniform", 1.8)])
def test_kurtosis_of_known_distributions(dist, kurt):
    torch.manual_seed(0)
    n = (2000, 100)
    x = {
        "normal": lambda: torch.randn(n),
        "laplace": lambda: torch.distributions.Laplace(0.5, 2.0).sample(n),
        "uniform": lambda: torch.rand(n),
    }[dist]()
    assert kurtosis(x) == pytest.approx(kurt, rel=0.05)
    model = _Table(x)
    spec = QuantSpec(4, granularity="token", group_size=None)
    ids = torch.arange(2000)
    stats = input_stats(model, [ids[:1000], ids[1000:]], spec)  # streamed over two batches
    st = stats["fc"]
    assert st.n == x.numel()
    assert st.kurtosis == pytest.approx(kurtosis(x), rel=1e-6)
    mse = float((x - fake_quantize(x, spec)).pow(2).mean())
    assert st.mse == pytest.approx(mse, rel=1e-6)
    assert st.rel_mse == pytest.approx(mse / float(x.pow(2).mean()), rel=1e-6)


def test_heavy_tails_cost_more_quantization_error():
    torch.manual_seed(0)
    gauss = torch.randn(500, 64)
    heavy = torch.distributions.StudentT(2.5).sample((500, 64))
    spec = QuantSpec(4, granularity="token", group_size=None)
    g = input_stats(_Table(gauss), [torch.arange(500)], spec)["fc"]
    h = input_stats(_Table(heavy), [torch.arange(500)], spec)["fc"]
    assert h.kurtosis > 2 * g.kurtosis and h.rel_mse > g.rel_mse


def test_stats_on_prepared_llama_cover_all_linear_inputs(llama):
    prepare(llama, QATRecipeConfig("ste"))
    stats = input_stats(llama, [torch.randint(0, 64, (2, 16))], QuantSpec(4, granularity="token", group_size=None))
    assert len(stats) == 14 and "lm_head" not in stats
    assert all(math.isfinite(s.kurtosis) and s.mse > 0 for s in stats.values())
