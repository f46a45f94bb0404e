"""Training and fine-tuning of BoQ models (Lightning + pytorch-metric-learning).

``python -m training train --config cpu_small --data DATASET`` or ``boq-vpr train ...``; see
``training.cli``. Importing this package loads neither Lightning nor pandas: the heavy modules
(``training.run``, ``training.gsv``, ...) are imported on use.
"""
