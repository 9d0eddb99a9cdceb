"""The data stage: vocabularies, user sequences, splits and popularity under <run>/data/.

    python jobs/preprocess.py --config ... --run-dir ...                          (local Ray in-process)
    ray job submit --working-dir . -- python jobs/preprocess.py --config ...      (joins the cluster)

Each stage reads the earlier stages' outputs from the run directory, so stages submitted as
separate jobs must share one --run-dir (a URI or shared storage when the cluster has several nodes).
"""

import sys

from ray_recall.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
