"""Deploy the recall endpoint for a finished run and block until Ctrl-C or SIGTERM:
`python jobs/serve.py --run-dir runs/x [--host 127.0.0.1] [--port 8000] [--replicas 1]`
(local Ray in-process, or the cluster named by RAY_ADDRESS)."""

import sys

from ray_recall.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
