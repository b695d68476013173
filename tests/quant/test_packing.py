"""The one bit packer against its definition, golden words, and compressed-tensors' own packer (SPEC §6)."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant import pack_rows, packed_words, unpack_rows


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 97, 200])
def test_roundtrip_exact_for_every_width_and_odd_shapes(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    values = torch.randint(0, 2**bits, (3, n), generator=g)
    words = pack_rows(values, bits)
    assert words.dtype == torch.int32 and words.shape == (3, packed_words(n, bits)) == (3, -(-n * bits // 32))
    assert torch.equal(unpack_rows(words, bits, n), values.to(torch.int32))


@pytest.mark.parametrize("bits", range(1, 9))
def test_value_i_sits_at_bit_i_times_b_of_the_block(bits):
    """Definition: a block of 32 values is one little-endian integer of 32·b bits."""
    g = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2**bits, (1, 32), generator=g)
    words = pack_rows(values, bits)[0].tolist()
    stream = sum((w & 0xFFFFFFFF) << (32 * k) for k, w in enumerate(words))
    assert [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(32)] == values[0].tolist()


def test_golden_words():
    codes = torch.tensor([[-8, -7, 1, 2, 3, 4, 5, 7]])  # compressed-tensors: signed codes + 2^(b-1)
    assert pack_rows(codes + 8, 4)[0, 0].item() & 0xFFFFFFFF == 0xFDCBA910
    assert pack_rows(torch.full((1, 8), 7), 4)[0, 0].item() & 0xFFFFFFFF == 0x77777777  # GPTQ v1 sym zeros (8 - 1)
    assert pack_rows(torch.full((1, 4), 127), 8)[0, 0].item() & 0xFFFFFFFF == 0x7F7F7F7F  # (128 - 1)
    three = [w & 0xFFFFFFFF for w in pack_rows(torch.full((1, 32), 3), 3)[0].tolist()]  # (4 - 1), straddling
    assert three == [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D]


@pytest.mark.parametrize("bits", range(1, 9))
def test_same_words_as_compressed_tensors(bits):
    helpers = pytest.importorskip(
        "compressed_tensors.compressors.pack_quantized.helpers",
        reason="compressed-tensors (a test extra) is not installed",
    )
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (7, 77), generator=g)
    ours = pack_rows(codes + 2 ** (bits - 1), bits)
    theirs = helpers.pack_to_int32(codes.to(torch.int8), bits)
    assert torch.equal(ours, theirs)
    back = helpers.unpack_from_int32(ours, bits, torch.Size((7, 77)))
    assert torch.equal(back.to(torch.int64), codes)


def test_bad_input_is_an_error():
    with pytest.raises(QscaleError, match="lie in"):
        pack_rows(torch.tensor([[0, 16]]), 4)
    with pytest.raises(QscaleError, match="integer"):
        pack_rows(torch.zeros(1, 4), 4)
    with pytest.raises(QscaleError, match="words per row"):
        unpack_rows(torch.zeros(1, 3, dtype=torch.int32), 4, 32)
    with pytest.raises(QscaleError, match="int32"):
        unpack_rows(torch.zeros(1, 4, dtype=torch.int64), 4, 32)
    with pytest.raises(QscaleError):
        pack_rows(torch.zeros(1, 4, dtype=torch.int64), 9)
