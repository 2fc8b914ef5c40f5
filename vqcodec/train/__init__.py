"""Training entry points: `python -m vqcodec.train.vqvae` and `python -m vqcodec.train.prior`.

Both run single-process or data-parallel under `torchrun` (PyTorch DDP; NCCL on GPUs, gloo on
CPUs) and resume from their checkpoint file.  Residual-VQ models (arch "rvq"):
`python -m vqcodec.train.rvq` (VQ-VAE and stage prior, joint rate-aware or two-stage; one
process) and `python -m vqcodec.train.recipe` (the configurations side by side in one GPU lease;
`pack_crops` readies its data).
"""
