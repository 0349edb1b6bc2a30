#!/bin/bash
# One mtjax sweep over 4 nodes x 4 GPUs: one process per node, each using its 4 GPUs.
# Submit with `sbatch docs/slurm_example.sh`; resubmit the same script to resume after a
# failure or a time-out (only the runs missing on disk are computed).
#SBATCH --job-name=mtjax-sweep
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1          # one JAX process per node ...
#SBATCH --gpus-per-node=4            # ... which shards each chunk over the node's 4 GPUs
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue                    # a preempted job starts again and resumes

set -euo pipefail
source "$HOME/venvs/mtjax/bin/activate"       # pip install -e '.[cuda]'

# The results folder must be on a file system shared by all nodes.
OUT=/shared/$USER/mtjax-results

# jax.distributed.initialize() detects the coordinator (first node of the job), the process
# count and the process id from SLURM's variables; nothing to set by hand. To run under
# another launcher, set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID instead, or pass --coordinator/--num-processes/--process-id.
#
# Under SLURM, JAX gives each process only the GPU numbered by its SLURM_LOCALID (JAX's
# default is one process per GPU). One process per node must claim all the node's GPUs:
export JAX_LOCAL_DEVICE_IDS=0,1,2,3
# (Or run one process per GPU: --ntasks-per-node=4, drop the line above; same results.)
#
# --memory-budget is per GPU (MiB); a chunk holds 4 x budget / (bytes per run) runs here.
srun mtjax simulate --distributed \
    --config sweeps/paper_full.toml --out "$OUT" \
    --memory-budget 16384 --quiet

# The last process to finish wrote $OUT/<name>/summary.csv. If the job was cut short, the
# parts on disk are kept; `mtjax merge $OUT/<name>` shows how many runs are done.
