"""One rank of a data-parallel training run (started by torchrun in tests/train/test_distributed.py).

    torchrun --nproc_per_node 2 ddp_worker.py CACHE_DIR OUT_DIR
"""

import sys

import torch
import torch.distributed as dist

from qscale.data import DataConfig, load_token_streams
from qscale.train import TrainConfig, train

torch.set_num_threads(1)
cache, out = sys.argv[1], sys.argv[2]
streams = load_token_streams(DataConfig(max_files=40, vocab_size=512, cache_dir=cache), progress=False)
cfg = TrainConfig(size="xs", tokens=6 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=2, eval_windows=4,
                  grad_accum=2, device="cpu")
train(cfg, streams, out, progress=False)
print(f"rank {dist.get_rank()} of {dist.get_world_size()}")  # fails unless the process group was joined
