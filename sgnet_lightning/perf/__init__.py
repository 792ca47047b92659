"""Speed measurements: ``sgnet bench`` (models, end to end, inference) and ``sgnet bench loader``.

``sgnet bench`` measures, in one run on whatever device is present, every architecture under two
sets of settings and writes one JSON file (``--out``) plus a table on stdout. The settings are the
suite's own configs, read from YAML (:mod:`.settings`):

- **seed way** (``experiments/seed_way/base.yaml``): the published notebook's settings: batch 4,
  fp16 autocast + GradScaler (fp32 on a CPU), default memory format, cudnn.benchmark off, one crop
  per loaded volume, sliding windows of 4 with constant blending;
- **suite** (``experiments/datasets/bml.yaml`` with ``experiments/base/gpu.yaml``): batch 32, bf16
  autocast, channels-last 3D, cudnn.benchmark on, queue with 16 samples per volume, 512 patches and
  8 workers, sliding windows of 32 (and 64) with Gaussian blending; ``--compile`` adds a
  ``torch.compile`` run. On a CPU the suite keeps fp32 and the seed's batch and changes only the
  memory format and the queue.

What is measured (each section records its settings and sizes):

- ``model_only`` (:mod:`.measure`): training steps (network, the suite's ``DiceBCELoss`` + attention
  loss where the model has one, Adam) on random tensors already on the device; warm-up, then the
  median of ``repeats`` timings of ``steps`` synchronised steps. Patches per second, peak memory.
- ``end_to_end`` (:mod:`.measure`): ``Trainer.fit`` through the real DataModule over a preprocessed
  phantom set: loader, transfer, on-device augmentation and step together, timed from the first step
  after the queue's first fill (a queue timed right after filling reads its buffer, not its
  workers) over at least two more fills.
- ``loader`` (:mod:`.loaders`): patches per second through the DataModule alone next to a *naive*
  TorchIO queue that reads the raw NIfTI files and resamples, rescales, flips and rotates whole
  uncropped volumes on the CPU for every load, as the seed did; both with the same queue settings,
  alternated in rounds on the same phantom set.
- ``inference`` (:mod:`.measure`): MONAI sliding window over one volume (2 x 240 x 240 x 155 on a
  GPU; smaller on a CPU, stated in the output), median of three after warm-up.
- ``numerics`` (:mod:`.measure`): how far the suite's precision and memory format move predictions
  from fp32.
- memory (:mod:`.device`): peak device memory per measurement, peak host RSS of this process
  (Linux: reset per measurement through ``/proc/self/clear_refs``) and the largest RSS of a finished
  child process.
- ``projection_bml`` (:mod:`.projection`): hours of the full BML benchmark at the measured rates.

Modules, in the order a run uses them: :mod:`.settings` (what is measured), :mod:`.device`,
:mod:`.loaders`, :mod:`.measure`, :mod:`.projection`, :mod:`.tables` (ratios and printing),
:mod:`.run` (the whole run, one JSON) and :mod:`.commands` (the command line).
No figure is estimated: a part that was not run is absent (or null) in the JSON.
"""
