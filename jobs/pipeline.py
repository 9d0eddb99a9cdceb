"""Run every stage: `python jobs/pipeline.py --config configs/ml100k_dssm.yaml` (local Ray in-process)
or `ray job submit --working-dir . -- python jobs/pipeline.py --config ...` (joins the cluster)."""

import sys

from ray_recall.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
