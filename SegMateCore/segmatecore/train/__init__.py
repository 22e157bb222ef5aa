"""Training SegMate: dataset preparation, 2.5D data loading, the loss, and the training loop.

Imported only by the ``prepare``, ``train``, ``finetune`` and ``evaluate`` commands, so that
inference never pays for it.
"""
