"""The train stage: Ray Train over the preprocessed samples; the best epoch becomes <run>/model/.

    python jobs/train.py --config ... --run-dir ...                          (local Ray in-process)
    ray job submit --working-dir . -- python jobs/train.py --config ...      (joins the cluster)

Each stage reads the earlier stages' outputs from the run directory, so stages submitted as
separate jobs must share one --run-dir (a URI or shared storage when the cluster has several nodes).
"""

import sys

from ray_recall.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
