"""lifelong: continual learning of generative models, as a plain PyTorch library.

Subpackages: ``models`` (networks, samplers, checkpoints), ``methods`` (one object per
continual-learning method, registered in ``methods.METHODS``), ``metrics`` (pure functions over a
task x task quality matrix). Nothing here imports DVC, MLflow or Ray; that glue lives in ``pipeline/``.
"""
