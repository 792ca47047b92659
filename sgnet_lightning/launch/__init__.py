"""Scale-out: a benchmark's runs, or a sweep's workers, on every GPU of a box or across a SLURM cluster.

    sgnet benchmark --config B.yaml --launcher local --gpus 0,1,2,3 [--launcher-set runs_per_gpu=2]
    sgnet benchmark --config B.yaml --launcher slurm [--launcher-set partition=gpu] [--wait]
    sgnet benchmark status --config B.yaml [--project --slots 8]
    sgnet sweep run S.yaml --study X --storage postgresql+psycopg2://... --launcher slurm --workers 8
    sgnet sweep status --study X --storage ...

The engine is **submitit** (its ``LocalExecutor`` for one machine, its ``SlurmExecutor`` job arrays
for a cluster), not a scheduler of our own: submitit writes the sbatch files, pickles each call,
runs it through ``srun``, catches the time-limit signal and requeues the task
(``<array>_<task>``). What this package adds is what the suite needs around it: which runs are still
missing, one process per slot with CUDA_VISIBLE_DEVICES and a share of the CPUs, the records that
``status`` reads, and Lightning told to leave requeueing to submitit (``docs/cluster.md``).

Every run goes through :func:`sgnet_lightning.benchmark.run_one`, the path of the sequential
command: train (resuming from ``last.ckpt``), test, ``COMPLETE`` last. So a task killed or requeued
at any point ends as an uninterrupted run would, and rerunning the command starts only what is
missing or failed.

Modules: :mod:`.settings` (``--launcher`` and its YAML), :mod:`.tasks` (what runs inside a job),
:mod:`.executors` (local slots, SLURM arrays), :mod:`.jobs` (benchmarks and sweeps through them),
:mod:`.status` (done / running / queued / failed), :mod:`.projection` (wall time on N slots).
"""

from sgnet_lightning.launch.settings import Launcher, command_line_overrides, load_launcher

__all__ = ["Launcher", "command_line_overrides", "load_launcher"]
