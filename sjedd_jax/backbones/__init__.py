"""Backbones, one folder each (bonsai style): ``modeling.py`` (the NNX modules) and
``params.py`` (the key map from the PyTorch state dicts people hold).

Each package's ``__init__`` states its input normalisation as ``MEAN`` and ``STD``
(per channel, on the [0, 1] scale), which the data pipeline applies.
"""
