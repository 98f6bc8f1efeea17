"""Training any zoo (or timm) model on mmengine's Runner with timm's data, augmentation, optimizer
and scheduler factories; the command lines are ``tools/train.py`` and ``tools/validate.py``.

One concern per module:

* ``config``: the settings (``DEFAULTS`` <- recipe file <- flags <- ``--cfg-options``);
* ``runtime``: mmengine's Runner and its fixes, device and process group, AMP, the run folder and
  resume, the frozen teacher, the command lines' body; the dense engine builds on it too;
* ``data``: the data pipeline (data sets, transforms, resume-exact samplers and loaders);
* ``schedule``: every learning-rate schedule;
* ``phases``: recipes in phases (which parameters train, with which loss and schedule);
* ``checkpoint``: every checkpoint file read or written, and loading weights into a model;
* ``losses``: the loss registry recipes name;
* ``hooks``: EMA, reseeding, progress, exports, job limits;
* ``fsdp``: FSDP2 sharding and its checkpoints;
* ``classification``: the classification task and its ``build_runner``.

Only ``checkpoint`` is imported by the core package; nothing is imported here, so that
``import backbones`` needs none of the training extras.
"""
