"""The peer side of benchmarks/preprocess_bench.py: torch-rechub 0.9.0's match-data preparation on a synthetic log.

Runs in .venv-peer (benchmarks/peer_env.sh), never in the project's venv, and imports nothing from
ray_recall. It does what torch-rechub's matching examples do before training (examples/matching/
run_ml_*.py): label-encode the ids, `generate_seq_feature_match` (time-sorted sequences, leave-last-out
test rows, list-wise training rows with word2vec-style popularity^0.75 negatives drawn once) and
`gen_model_input` on the training and test rows (user and item profiles merged in, histories padded
and truncated to 50 items).

    .venv-peer/bin/python benchmarks/peer_preprocess.py --log /tmp/log_1m --out /tmp/peer_1m.json

--log is a directory written by `ray_recall.stages.preprocess.synthetic.write_sharded` (interactions/*.parquet,
users.parquet, items.parquet). Wall seconds of every step go to --out as JSON; peak memory is measured
by the caller, from outside.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import time

import numpy as np
import pandas as pd

NEG_RATIO = 3  # every example's neg_ratio
SEQ_MAX_LEN = 50  # the examples' history length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2022)
    args = ap.parse_args()

    from sklearn.preprocessing import LabelEncoder
    from torch_rechub.utils.match import gen_model_input, generate_seq_feature_match

    random.seed(args.seed)
    np.random.seed(args.seed)
    steps = {}
    t0 = time.perf_counter()
    files = sorted(glob.glob(os.path.join(args.log, "interactions", "*.parquet")))
    data = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    users = pd.read_parquet(os.path.join(args.log, "users.parquet"))
    items = pd.read_parquet(os.path.join(args.log, "items.parquet"))
    data = data.merge(users, on="user_id", how="left").merge(items[["item_id", "category"]], on="item_id", how="left")
    steps["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    for col in ("user_id", "item_id", "taste", "category"):
        data[col] = LabelEncoder().fit_transform(data[col]) + 1
    user_profile = data[["user_id", "taste"]].drop_duplicates("user_id")
    item_profile = data[["item_id", "category"]].drop_duplicates("item_id")
    steps["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    df_train, df_test = generate_seq_feature_match(data, "user_id", "item_id", time_col="timestamp", item_attribute_cols=[],
                                                   sample_method=1, mode=2, neg_ratio=NEG_RATIO, min_item=0)
    steps["generate_seq_feature_match"] = time.perf_counter() - t
    t = time.perf_counter()
    x_train = gen_model_input(df_train, user_profile, "user_id", item_profile, "item_id", seq_max_len=SEQ_MAX_LEN)
    x_test = gen_model_input(df_test, user_profile, "user_id", item_profile, "item_id", seq_max_len=SEQ_MAX_LEN)
    steps["gen_model_input"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0

    import importlib.metadata as md

    out = {"interactions": len(data), "train_rows": len(x_train["user_id"]), "test_rows": len(x_test["user_id"]),
           "seconds": seconds, "steps": steps, "torch_rechub": md.version("torch-rechub")}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
