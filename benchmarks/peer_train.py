"""The peer side of benchmarks/train_bench.py: torch-rechub 0.9.0's MatchTrainer on MovieLens-100K.

Runs in .venv-peer (benchmarks/peer_env.sh), never in the project's venv, and imports nothing from
ray_recall. The data preparation, features, model sizes and trainer calls follow torch-rechub's
MovieLens examples (examples/matching/run_ml_{dssm,youtube_dnn,mind}.py): `generate_seq_feature_match`
with word2vec-style (popularity^0.75) negatives drawn once, `gen_model_input` with 50-item histories,
16-dim embeddings for every feature, `MatchDataGenerator.generate_dataloader` and `MatchTrainer.fit`.
Only the input differs: the ML-100K files bundled with the recbole wheel (paths given by the caller)
instead of the examples' ML-1M sample CSV.

    .venv-peer/bin/python benchmarks/peer_train.py --model dssm --inter .../ml-100k.inter \
        --user .../ml-100k.user --item .../ml-100k.item --epochs 3 --out /tmp/peer_dssm.json

Each epoch of `MatchTrainer.fit` is timed by wrapping the trainer's own `train_one_epoch` (what
`fit` calls once per epoch); the wall and CPU seconds (this process and its DataLoader workers) of
every epoch go to --out as JSON, with rows (DataLoader rows) and samples per epoch. A *sample* is one
(user, positive) training row with its negatives, the unit ray_recall's trainer counts: list-wise,
one DataLoader row holds the positive and its negatives (samples = rows); point-wise (the DSSM
example), every positive and every negative is a row of its own (samples = rows / (1 + neg_ratio)).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time

import numpy as np
import pandas as pd
import torch

# What each example sets: training mode (0 point-wise, 2 list-wise), batch size and DataLoader
# workers (generate_dataloader's default of 8 where the example does not pass num_workers).
EXAMPLES = {
    "dssm": {"mode": 0, "batch_size": 4096, "loader_workers": 8, "lr": 1e-4},
    "youtubednn": {"mode": 2, "batch_size": 2048, "loader_workers": 8, "lr": 1e-4},
    "mind": {"mode": 2, "batch_size": 256, "loader_workers": 0, "lr": 1e-3},
}
NEG_RATIO = 3  # every example's neg_ratio
EMBED_DIM = 16  # every example's embed_dim
SEQ_MAX_LEN = 50


def read_atomic(path: str) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header 'name:type') as strings."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def movielens_frame(inter: str, user: str, item: str) -> pd.DataFrame:
    """ML-100K in the columns of the examples' ml-1m sample CSV: user_id, movie_id, rating, timestamp,
    gender, age, occupation, zip, genres ('|'-joined)."""
    ratings = read_atomic(inter).rename(columns={"item_id": "movie_id"})
    ratings["timestamp"] = ratings["timestamp"].astype(float).astype(np.int64)
    users = read_atomic(user).rename(columns={"zip_code": "zip"})
    items = read_atomic(item).rename(columns={"item_id": "movie_id"})
    items["genres"] = items["class"].str.split(" ").str.join("|")
    data = ratings.merge(users[["user_id", "gender", "age", "occupation", "zip"]], on="user_id", how="left")
    data = data.merge(items[["movie_id", "genres"]], on="movie_id", how="left")
    data["genres"] = data["genres"].fillna("unknown").replace("", "unknown")
    return data


def prepare(model_name: str, data: pd.DataFrame):
    """The examples' get_movielens_data without its cache files: (features..., x_train, y_train, test_user, all_item)."""
    from sklearn.preprocessing import LabelEncoder

    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.utils.data import df_to_dict
    from torch_rechub.utils.match import gen_model_input, generate_seq_feature_match

    data["cate_id"] = data["genres"].apply(lambda x: x.split("|")[0])
    sparse_features = ["user_id", "movie_id", "gender", "age", "occupation", "zip", "cate_id"]
    user_col, item_col = "user_id", "movie_id"
    feature_max_idx = {}
    for feature in sparse_features:
        data[feature] = LabelEncoder().fit_transform(data[feature]) + 1
        feature_max_idx[feature] = data[feature].max() + 1
    user_profile = data[["user_id", "gender", "age", "occupation", "zip"]].drop_duplicates("user_id")
    item_profile = data[["movie_id", "cate_id"]].drop_duplicates("movie_id")
    mode = EXAMPLES[model_name]["mode"]
    pad = {"padding": "post", "truncating": "post"} if model_name == "mind" else {}
    df_train, df_test = generate_seq_feature_match(data, user_col, item_col, time_col="timestamp", item_attribute_cols=[],
                                                   sample_method=1, mode=mode, neg_ratio=NEG_RATIO, min_item=0)
    x_train = gen_model_input(df_train, user_profile, user_col, item_profile, item_col, seq_max_len=SEQ_MAX_LEN, **pad)
    y_train = x_train["label"] if mode == 0 else np.array([0] * df_train.shape[0])
    x_test = gen_model_input(df_test, user_profile, user_col, item_profile, item_col, seq_max_len=SEQ_MAX_LEN, **pad)

    user_cols = ["user_id", "gender", "age", "occupation", "zip"]
    user_features = [SparseFeature(n, vocab_size=feature_max_idx[n], embed_dim=EMBED_DIM) for n in user_cols]
    movie_vocab = feature_max_idx["movie_id"]
    if model_name == "dssm":
        user_features += [SequenceFeature("hist_movie_id", vocab_size=movie_vocab, embed_dim=EMBED_DIM, pooling="mean",
                                          shared_with="movie_id")]
        item_features = [SparseFeature(n, vocab_size=feature_max_idx[n], embed_dim=EMBED_DIM) for n in ["movie_id", "cate_id"]]
        feats = (user_features, item_features)
    else:
        hist = SequenceFeature("hist_movie_id", vocab_size=movie_vocab, embed_dim=EMBED_DIM,
                               pooling="mean" if model_name == "youtubednn" else "concat", shared_with="movie_id")
        item_features = [SparseFeature("movie_id", vocab_size=movie_vocab, embed_dim=EMBED_DIM)]
        neg_item_feature = [SequenceFeature("neg_items", vocab_size=movie_vocab, embed_dim=EMBED_DIM, pooling="concat",
                                            shared_with="movie_id")]
        if model_name == "youtubednn":
            feats = (user_features + [hist], item_features, neg_item_feature)
        else:
            feats = (user_features, [hist], item_features, neg_item_feature)
    return feats, x_train, y_train, x_test, df_to_dict(item_profile)


def build_model(model_name: str, feats):
    """The examples' model constructors, with their settings."""
    from torch_rechub.models.matching import DSSM, MIND, YoutubeDNN

    if model_name == "dssm":
        user_features, item_features = feats
        return DSSM(user_features, item_features, temperature=0.02,
                    user_params={"dims": [256, 128, 64], "activation": "prelu"},
                    item_params={"dims": [256, 128, 64], "activation": "prelu"})
    if model_name == "youtubednn":
        user_features, item_features, neg_item_feature = feats
        return YoutubeDNN(user_features, item_features, neg_item_feature, user_params={"dims": [128, 64, 16]}, temperature=0.02)
    user_features, history_features, item_features, neg_item_feature = feats
    return MIND(user_features, history_features, item_features, neg_item_feature, max_length=SEQ_MAX_LEN, temperature=0.02)


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the DataLoader workers of past epochs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(EXAMPLES))
    ap.add_argument("--inter", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--item", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the example's")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers (default: the example's)")
    ap.add_argument("--train-fraction", type=float, default=1.0, help="train on a seeded sample of the rows (smoke runs)")
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from torch_rechub.trainers import MatchTrainer
    from torch_rechub.utils.data import MatchDataGenerator

    ex = EXAMPLES[args.model]
    batch_size = args.batch_size or ex["batch_size"]
    loader_workers = ex["loader_workers"] if args.loader_workers is None else args.loader_workers
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    feats, x_train, y_train, x_test, all_item = prepare(args.model, movielens_frame(args.inter, args.user, args.item))
    if args.train_fraction < 1.0:
        n = len(y_train)
        keep = np.sort(np.random.default_rng(args.seed).choice(n, max(1, int(n * args.train_fraction)), replace=False))
        x_train = {k: np.asarray(v)[keep] for k, v in x_train.items()}
        y_train = np.asarray(y_train)[keep]
    prep_seconds = time.perf_counter() - t0

    model = build_model(args.model, feats)
    with tempfile.TemporaryDirectory() as save_dir:
        trainer = MatchTrainer(model, mode=ex["mode"], optimizer_params={"lr": ex["lr"], "weight_decay": 1e-6},
                               n_epoch=args.epochs, device="cpu", model_path=save_dir)
        dg = MatchDataGenerator(x=x_train, y=y_train)
        train_dl, _, _ = dg.generate_dataloader(x_test, all_item, batch_size=batch_size, num_workers=loader_workers)

        epochs = []
        run_epoch = trainer.train_one_epoch

        def timed_epoch(data_loader, log_interval=10):
            w0, c0 = time.perf_counter(), cpu_seconds()
            loss = run_epoch(data_loader, log_interval)
            epochs.append({"epoch": len(epochs), "seconds": time.perf_counter() - w0, "cpu_seconds": cpu_seconds() - c0,
                           "loss": float(loss)})
            return loss

        trainer.train_one_epoch = timed_epoch
        t0 = time.perf_counter()
        trainer.fit(train_dl)
        fit_seconds = time.perf_counter() - t0

    rows = len(y_train)
    per_row = 1 + NEG_RATIO if ex["mode"] == 0 else 1
    for e in epochs:
        e["rows"], e["samples"] = rows, rows / per_row
    import importlib.metadata as md

    out = {
        "model": args.model, "mode": ex["mode"], "neg_ratio": NEG_RATIO, "batch_size": batch_size, "threads": args.threads,
        "loader_workers": loader_workers, "rows_per_sample": per_row, "train_rows": rows, "train_samples": rows / per_row,
        "params": sum(p.numel() for p in model.parameters()), "prep_seconds": prep_seconds, "fit_seconds": fit_seconds,
        "epochs": epochs, "torch": torch.__version__, "torch_rechub": md.version("torch-rechub"), "pid": os.getpid(),
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
