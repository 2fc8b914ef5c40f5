"""Training entry points: `python -m vqcodec.train.vqvae` and `python -m vqcodec.train.prior`.

Both run single-process or data-parallel under `torchrun` (PyTorch DDP; NCCL on GPUs, gloo on
CPUs) and resume from their checkpoint file.
"""
