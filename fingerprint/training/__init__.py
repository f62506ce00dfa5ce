"""Training stages: episodes, the training loop and checkpoints, `train`, `pretrain` and `adapt` (the learned metric).

May import: the packages below it (`core`, `data`, `evaluation`, `imaging`, `embedding`).
"""
