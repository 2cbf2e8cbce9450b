#!/bin/bash
# A plain SLURM array over an experiment's cells, for those who prefer sbatch to submitit:
#   n=$(.venv/bin/python -m bench.launcher cells experiment=table6_decoders | wc -l)
#   sbatch --array=0-$((n - 1)) bench/tools/sbatch_cells.sh train.py experiment=table6_decoders [key=value ...]
# Task i runs cell i of `python -m bench.launcher cells ...` (the same order as train.py's). A requeued or
# re-run task resumes the cell from its checkpoints; a finished cell is skipped.
#SBATCH --job-name=regionbench
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
script=$1; shift                       # train.py | eval.py | bench/extract.py
cd "${SLURM_SUBMIT_DIR:-.}"
PY=${PY:-.venv/bin/python}
cell=$("$PY" -m bench.launcher cells "$@" | sed -n "$(( ${SLURM_ARRAY_TASK_ID:-0} + 1 ))p")
if [ -z "$cell" ]; then echo "no cell for array index ${SLURM_ARRAY_TASK_ID:-0}" >&2; exit 2; fi
if [ "$script" = bench/extract.py ]; then exec "$PY" -m bench.extract "$@" "cell=$cell"; fi
exec "$PY" "$script" "$@" "cell=$cell"
