import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant.hadamard import hadamard_group_size, hadamard_matrix, hadamard_transform


@pytest.mark.parametrize("n", [1, 2, 8, 128])
def test_hadamard_orthonormal_symmetric(n):
    h = hadamard_matrix(n, torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.T)
    assert torch.all(h.abs() == h[0, 0].abs())  # ±1/sqrt(n) entries


def test_transform_inverse_and_matmul_invariance():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 256, dtype=torch.float64)
    w = torch.randn(32, 256, dtype=torch.float64)
    xh = hadamard_transform(x, 128)
    assert torch.allclose(hadamard_transform(xh, 128), x, atol=1e-12, rtol=0)
    assert torch.allclose(xh @ hadamard_transform(w, 128).T, x @ w.T, atol=1e-10)
    assert torch.allclose(xh.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    # groups are independent: the second group of 128 does not touch the first
    x2 = x.clone()
    x2[..., 128:] = 0
    assert torch.allclose(hadamard_transform(x2, 128)[..., :128], xh[..., :128], atol=1e-12)


def test_group_size_and_errors():
    assert hadamard_group_size(4096) == 128
    assert hadamard_group_size(96) == 32
    assert hadamard_group_size(11008) == 128
    assert hadamard_group_size(344) == 8
    with pytest.raises(QscaleError):
        hadamard_matrix(12)
    with pytest.raises(QscaleError):
        hadamard_transform(torch.zeros(2, 100), 128)
