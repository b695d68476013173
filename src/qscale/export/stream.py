"""A safetensors file written one tensor at a time, so that exporting never holds a second copy of a model.

``safetensors.torch.save_file`` serializes a whole dict into one buffer first; here each tensor's bytes go
straight to a side file as the model walk produces them, and the final file is the 8-byte header length,
the JSON header (names, dtypes, shapes, byte offsets; padded to 8 bytes) and those bytes copied in chunks.
The result is a standard safetensors file (read back by ``safetensors.safe_open`` in every test).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch
from torch import Tensor

from qscale.errors import require

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsWriter:
    """Append tensors with :meth:`add`; :meth:`close` writes the file."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = open(self._data_path, "wb")
        self._header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self.nbytes = 0

    def add(self, key: str, tensor: Tensor) -> None:
        require(key not in self._header, f"tensor {key} is written twice")
        require(tensor.dtype in DTYPES, f"tensor {key}: dtype {tensor.dtype} cannot be stored in safetensors")
        t = tensor.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8)
        self._data.write(raw.numpy().data)
        size = raw.numel()
        self._header[key] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self.nbytes, self.nbytes + size],
        }
        self.nbytes += size

    def close(self) -> None:
        self._data.close()
        header = json.dumps(self._header, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as f, open(self._data_path, "rb") as data:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            shutil.copyfileobj(data, f, length=16 * 1024 * 1024)
        self._data_path.unlink()
