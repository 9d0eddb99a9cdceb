"""Reading interactions: MovieLens (bundled and GroupLens layouts), any table, and clear errors for bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from ray_recall.config import DataConfig, PipelineConfig
from ray_recall.stages.preprocess import preprocess
from ray_recall.stages.preprocess.sources import load_source
from ray_recall.errors import DataError
from ray_recall.rundir import RunDir

pytestmark = pytest.mark.usefixtures("ray_session")


def test_bundled_movielens_100k():
    raw = load_source(DataConfig(source="movielens"))
    assert raw.interactions.count() == 100_000
    assert raw.interactions.schema().names == ["user_id", "item_id", "timestamp"]
    assert len(raw.users) == 943 and len(raw.items) == 1682
    assert raw.items.loc[raw.items.item_id == 1, "title"].item() == "Toy Story (1995)"
    assert "Animation" in raw.items.loc[raw.items.item_id == 1, "genre"].item().split("|")
    assert raw.local.has_at_most(2_000_000) and raw.local.read().num_rows == 100_000


def _write_ml100k(d):
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t100\n1\t20\t3\t101\n2\t10\t4\t99\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    genres = ["0"] * 19
    g1 = genres.copy(); g1[1] = "1"; g1[5] = "1"
    (d / "u.item").write_text(f"10|Movie A (1995)|01-Jan-1995||http://x|{'|'.join(g1)}\n"
                              f"20|Movie B (1990)|01-Jan-1990||http://x|{'|'.join(genres)}\n")


def _same_log_both_ways(raw):
    """The source's in-process read gives the rows, columns and order of its Ray Dataset."""
    rows = [(r["user_id"], r["item_id"], r["timestamp"]) for r in raw.interactions.take_all()]
    local = raw.local.read()
    assert local.column_names == ["user_id", "item_id", "timestamp"]
    assert list(zip(*(local.column(c).to_pylist() for c in local.column_names))) == rows


def test_grouplens_layouts(tmp_path):
    _write_ml100k(tmp_path / "a")
    raw = load_source(DataConfig(source="movielens", path=str(tmp_path / "a")))
    assert raw.interactions.count() == 3
    _same_log_both_ways(raw)
    assert raw.items.set_index("item_id").loc[10, "genre"] == "Action|Comedy"
    b = tmp_path / "b"
    b.mkdir()
    (b / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (b / "users.dat").write_text("1::F::1::10::48067\n")
    (b / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James (1996)::Animation|Musical\n")
    raw = load_source(DataConfig(source="movielens", path=str(b)))
    rows = raw.interactions.take_all()
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in rows] == [(1, 1193, 978300760), (1, 661, 978302109)]
    assert raw.items.set_index("item_id").loc[1193, "year"] == "1975"
    _same_log_both_ways(raw)
    c = tmp_path / "c"
    c.mkdir()
    (c / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    (c / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier Old Men (1995)",Comedy\n')
    raw = load_source(DataConfig(source="movielens", path=str(c)))
    assert raw.interactions.count() == 2 and raw.users is None
    _same_log_both_ways(raw)
    with pytest.raises(DataError, match="not a MovieLens directory"):
        load_source(DataConfig(source="movielens", path=str(tmp_path)))


@pytest.fixture(params=["ray_data", "in_process"])
def stage(request):
    """The data stage's two paths: Ray Data (any size) and in this process (small logs); both must behave alike."""
    return request.param


def _table_cfg(tmp_path, path, stage="in_process", **data):
    if stage == "ray_data":
        data["in_process_max_rows"] = 0
    return PipelineConfig.from_dict({"run_dir": str(tmp_path / "run"),
                                     "data": {"source": "table", "path": str(path), **data}})


def _log(n_users=6, per_user=5):
    rows = [(f"u{u}", 100 + (u * 7 + i) % 13, 1000 + i, f"g{u % 2}", f"c{(u + i) % 3}|x")
            for u in range(n_users) for i in range(per_user)]
    return pd.DataFrame(rows, columns=["uid", "iid", "ts", "segment", "tags"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_with_column_mapping_and_inline_features(tmp_path, fmt):
    # In this process; test_in_process_path_writes_what_ray_data_writes shows Ray Data writes the same files.
    df = _log()
    path = tmp_path / f"log.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    cfg = _table_cfg(tmp_path, path, user_col="uid", item_col="iid", time_col="ts", user_feature_cols=["segment"],
                     item_feature_cols=["tags"], multi_value_cols=["tags"])
    run = RunDir(cfg.run_dir)
    meta = preprocess(cfg, run, log=lambda *_: None)
    assert meta["num_users"] == 6 and meta["num_interactions"] == 30
    schema = run.read_schema()
    assert schema.user_features["segment"].shape == (7,) and schema.user_features["segment"][0] == 0
    assert schema.item_features["tags"].shape[1] == 2  # multi-valued: two codes per item
    assert set(meta["item_features"]["tags"]["values"]) == {"c0", "c1", "c2", "x"}
    items = run.read_items()
    assert items["item_idx"].tolist() == list(range(1, len(items) + 1))  # dense ids from 1
    # The sample counts in meta.json are those of the files written.
    assert {split: len(run.read_split(split)) for split in meta["samples"]} == meta["samples"] == {
        "train": 30 - 3 * 6, "val": 6, "test": 6}
    # Samples follow the sequence files' user order, not the order tasks happened to finish in:
    # that is what makes a fit on the same data the same on any cluster.
    seqs = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "run" / "data" / "sequences").glob("*.parquet"))])
    for split, per_user in (("train", seqs["length"] - 3), ("test", 1)):
        want = np.repeat(seqs["user_idx"].to_numpy(), per_user)
        assert run.read_split(split)["user_idx"].tolist() == want.tolist(), split
    # The samplers' popularity counts each sequence's train part: all but its last two items.
    want_counts = np.bincount(np.concatenate([s[:-2] for s in seqs["items"]]), minlength=len(items) + 1)
    assert items["count"].tolist() == want_counts[1:].tolist()


def test_recbole_atomic_files_and_tsv(tmp_path):
    """A RecBole atomic log and item file (the format public recommendation datasets are shipped in): the header's
    ':type' suffixes dropped, ids kept as strings ('007' is not '7'), quotes taken literally, item attributes from
    the .item file; both readers give the same log. A plain .tsv reads with its own header."""
    inter = tmp_path / "shop.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t5\t{t}\n" for t, (u, i) in enumerate(
                         [("007", "a"), ("007", "b"), ("007", "c"), ("7", "b"), ("7", "c"), ("7", 'the "d"')])))
    item = tmp_path / "shop.item"
    item.write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n"
                    'a\tA "quoted" title\tx y\nb\tB\ty\nc\tC\tx\nthe "d"\tD\tz\n')
    raw = load_source(DataConfig(source="table", path=str(inter), item_table=str(item), title_col="title",
                                 item_feature_cols=["genre"], multi_value_cols=["genre"], multi_value_sep=" "))
    rows = [(r["user_id"], r["item_id"], r["timestamp"]) for r in raw.interactions.take_all()]
    assert rows[0] == ("007", "a", 0.0) and rows[-1] == ("7", 'the "d"', 5.0) and len(rows) == 6
    _same_log_both_ways(raw)
    assert raw.items.set_index("item_id").loc["a", "title"] == 'A "quoted" title'
    cfg = _table_cfg(tmp_path, inter, item_table=str(item), title_col="title", item_feature_cols=["genre"],
                     multi_value_cols=["genre"], multi_value_sep=" ")
    meta = preprocess(cfg, RunDir(cfg.run_dir), log=lambda *_: None)
    assert meta["num_users"] == 2 and meta["num_items"] == 4
    assert set(meta["item_features"]["genre"]["values"]) == {"x", "y", "z"}

    tsv = tmp_path / "log.tsv"
    _log().to_csv(tsv, sep="\t", index=False)
    raw = load_source(DataConfig(source="table", path=str(tsv), user_col="uid", item_col="iid", time_col="ts"))
    assert raw.interactions.count() == 30 and raw.interactions.take(1)[0] == {"user_id": "u0", "item_id": 100, "timestamp": 1000}
    _same_log_both_ways(raw)


def test_atomic_header_without_types_is_named(tmp_path):
    path = tmp_path / "log.inter"
    path.write_text("user_id\titem_id\ttimestamp\n1\t2\t3\n")
    _expect_error(tmp_path, _table_cfg(tmp_path, path), str(path), "not a RecBole atomic file", "'user_id'")
    empty = tmp_path / "empty.inter"
    empty.write_text("")
    _expect_error(tmp_path, _table_cfg(tmp_path, empty), str(empty), "no header line")


def _expect_error(tmp_path, cfg, *needles):
    """The stage fails with a DataError naming each needle, and the run's previous data/ is left as it was."""
    run = RunDir(cfg.run_dir)
    run.write_json({"previous": True}, "data", "meta.json")
    with pytest.raises(DataError) as e:
        preprocess(cfg, run, log=lambda *_: None)
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    assert run.read_json("data", "meta.json") == {"previous": True}
    root = tmp_path / "run"
    assert sorted(p.name for p in root.iterdir()) == ["data"]  # no temporary directory left behind
    assert sorted(p.name for p in (root / "data").iterdir()) == ["meta.json"]
    return str(e.value)


def test_missing_column_names_it_and_the_found_ones(tmp_path):
    path = tmp_path / "log.csv"
    _log().to_csv(path, index=False)
    cfg = _table_cfg(tmp_path, path, user_col="user", item_col="iid", time_col="ts")
    _expect_error(tmp_path, cfg, "missing column 'user'", "uid", str(path))


def test_empty_file(tmp_path, stage):
    path = tmp_path / "empty.csv"
    path.write_text("")
    _expect_error(tmp_path, _table_cfg(tmp_path, path, stage), str(path))
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,item_id,timestamp\n")
    _expect_error(tmp_path, _table_cfg(tmp_path, header_only, stage), "no interactions")


def test_non_numeric_timestamp(tmp_path, stage):
    """Named as the input names it (the column and the config key that maps it), on both paths."""
    df = _log()
    df["ts"] = df["ts"].astype(str)
    df.loc[7, "ts"] = "yesterday"
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    cfg = _table_cfg(tmp_path, path, stage, user_col="uid", item_col="iid", time_col="ts")
    _expect_error(tmp_path, cfg, str(path), "column 'ts' (data.time_col) holds 'yesterday'",
                  "neither a number nor an ISO 8601 date-time")


def test_date_time_strings_are_seconds_since_the_epoch(tmp_path):
    """Timestamps stored as ISO 8601 strings (here in Parquet, which no reader parses for us): without a zone as UTC,
    with one converted, the fraction of a second kept, so that it orders a user's events within one second."""
    df = pd.DataFrame({"uid": ["u1"] * 3 + ["u2"] * 3, "iid": ["c", "a", "b", "a", "b", "c"],
                       "ts": ["2024-01-11T10:08:15+01:00", "2024-01-11T09:08:14.5", "2024-01-11 09:08:14",
                              "2024-01-11", "2024-01-12T00:00:00Z", "2024-01-12 00:00:01"]})
    df.to_parquet(tmp_path / "log.parquet")
    cfg = _table_cfg(tmp_path, tmp_path / "log.parquet", user_col="uid", item_col="iid", time_col="ts")
    run = RunDir(cfg.run_dir)
    preprocess(cfg, run, log=lambda *_: None)
    items, users = run.read_item_vocab().ids, run.read_user_vocab().ids
    rows = run.read_parquet("data", "sequences", columns=["user_idx", "items", "times"]).to_pylist()
    got = {users[r["user_idx"] - 1]: ([items[i - 1] for i in r["items"]], r["times"]) for r in rows}
    day = 1704931200.0  # 2024-01-11T00:00:00Z
    assert got == {"u1": (["b", "a", "c"], [day + 32894.0, day + 32894.5, day + 32895.0]),
                   "u2": (["a", "b", "c"], [day, day + 86400.0, day + 86401.0])}


@pytest.mark.parametrize("values, seconds", [
    (["2024-01-11 09:08:14", "2024-01-11T09:08:14.5"], [1704964094.0, 1704964094.5]),  # no zone: UTC
    (["2024-01-11T09:08:14Z", "2024-01-11T10:08:14.25+01:00"], [1704964094.0, 1704964094.25]),
    (["2024-01-11T09:08:14Z", "2024-01-11 09:08:14.5"], [1704964094.0, 1704964094.5]),  # both kinds in one column
    (["1704964094", "1704964094.5"], [1704964094.0, 1704964094.5]),
])
def test_timestamp_strings_become_seconds(values, seconds):
    import pyarrow as pa

    from ray_recall.stages.preprocess.sources import validate_and_normalize

    batch = pa.table({"user_id": ["u"] * len(values), "item_id": ["i"] * len(values), "timestamp": values})
    assert validate_and_normalize(batch, "log").column("timestamp").to_pylist() == seconds


@pytest.mark.parametrize("values, needle", [
    (["1700000000", "2024-01-11"], "mixes numbers and date-times (e.g. '1700000000' and '2024-01-11')"),
    (["2024-01-11", "11/01/2024"], "holds '11/01/2024', which is neither a number nor an ISO 8601 date-time"),
    (["1", "nan"], "holds nan, not a finite time"),
])
def test_bad_timestamps_name_the_column_and_value(values, needle):
    import pyarrow as pa

    from ray_recall.stages.preprocess.sources import validate_and_normalize

    batch = pa.table({"user_id": ["u"] * len(values), "item_id": ["i"] * len(values), "timestamp": values})
    with pytest.raises(DataError) as e:
        validate_and_normalize(batch, "table log.csv", {"timestamp": "'ts' (data.time_col)"})
    assert str(e.value).startswith("table log.csv: column 'ts' (data.time_col) ") and needle in str(e.value), str(e.value)


def test_empty_ids_are_an_error_not_an_id(tmp_path):
    """A CSV's empty field is read as an empty string: it must not become a user or an item."""
    path = tmp_path / "log.csv"
    path.write_text("uid,iid,ts\nu1,a,1\nu1,,2\nu1,c,3\n")
    cfg = _table_cfg(tmp_path, path, user_col="uid", item_col="iid", time_col="ts")
    _expect_error(tmp_path, cfg, str(path), "column 'iid' (data.item_col) has empty ids (1 in one block)")


def test_missing_timestamp(tmp_path, stage):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,1,100\n1,2,\n1,3,102\n")
    _expect_error(tmp_path, _table_cfg(tmp_path, path, stage), str(path), "column 'timestamp' (data.time_col) has missing values")


def test_null_and_negative_ids(tmp_path, stage):
    df = pd.DataFrame({"user_id": [1.0, np.nan, 2.0], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    df.to_parquet(tmp_path / "nulls.parquet")
    _expect_error(tmp_path, _table_cfg(tmp_path, tmp_path / "nulls.parquet", stage), "column 'user_id' (data.user_col) has null values",
                  str(tmp_path / "nulls.parquet"))
    df = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, -2, 3], "timestamp": [1, 2, 3]})
    df.to_parquet(tmp_path / "neg.parquet")
    _expect_error(tmp_path, _table_cfg(tmp_path, tmp_path / "neg.parquet", stage), "column 'item_id' (data.item_col) has a negative id (-2)")


def test_missing_file(tmp_path):
    _expect_error(tmp_path, _table_cfg(tmp_path, tmp_path / "nope.parquet"), "nope.parquet")


def test_short_users_are_dropped_and_counted(tmp_path):
    # In this process; the Ray Data path drops and counts the same users (test_in_process_path_writes_what_ray_data_writes).
    df = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [1, 2, 3, 1, 2], "timestamp": [1, 2, 3, 1, 2]})
    df.to_parquet(tmp_path / "log.parquet")
    cfg = _table_cfg(tmp_path, tmp_path / "log.parquet")
    run = RunDir(cfg.run_dir)
    meta = preprocess(cfg, run, log=lambda *_: None)
    assert meta["dropped_users"] == 1 and meta["num_sequence_users"] == 1
    assert meta["samples"] == {"train": 0, "val": 1, "test": 1} and len(run.read_split("train")) == 0
    assert json.loads((tmp_path / "run" / "data" / "meta.json").read_text()) == run.read_meta()


def _log_with_duplicates(tmp_path):
    df = _log().rename(columns={"uid": "user_id", "iid": "item_id", "ts": "timestamp"})[["user_id", "item_id", "timestamp"]]
    # u1's third row twice more, u4's first row once more; u5's last row repeated with a new timestamp is no duplicate.
    extra = pd.concat([df.iloc[[7, 7, 20]], df.iloc[[29]].assign(timestamp=2000)])
    path = tmp_path / "log.parquet"
    pd.concat([df, extra]).sample(frac=1.0, random_state=0).to_parquet(path, index=False)
    return df, path


def test_duplicate_rows_dropped_and_counted(tmp_path):
    # In this process; the Ray Data path drops the same rows (test_in_process_path_writes_what_ray_data_writes).
    df, path = _log_with_duplicates(tmp_path)
    cfg = _table_cfg(tmp_path, path)
    lines = []
    meta = preprocess(cfg, RunDir(cfg.run_dir), log=lines.append)
    assert meta["duplicate_rows_dropped"] == 3 and meta["duplicates"] == "drop"
    assert meta["num_interactions"] == len(df) + 1
    assert "3 duplicate rows dropped" in lines[-1]
    assert json.loads((tmp_path / "run" / "data" / "meta.json").read_text())["duplicate_rows_dropped"] == 3


def test_duplicate_rows_error(tmp_path, stage):
    df, path = _log_with_duplicates(tmp_path)
    row = df.iloc[7]  # the first duplicate found may be either repeated row
    other = df.iloc[20]
    msg = _expect_error(tmp_path, _table_cfg(tmp_path, path, stage, duplicates="error"), str(path), "duplicate rows",
                        "data.duplicates=drop")
    assert any(f"user {r.user_id!r}, item {r.item_id}, timestamp {r.timestamp}" in msg for r in (row, other)), msg


def test_sharded_synthetic_log_shares_the_catalogue_and_is_reproducible(tmp_path):
    """write_sharded: one file per block of users, the catalogue and taste groups of generate(), same files twice."""
    from ray_recall.config import SyntheticConfig
    from ray_recall.stages.preprocess.synthetic import generate, write_sharded

    cfg = SyntheticConfig(num_users=250, num_items=120, num_groups=4, mean_length=15, seed=5)
    paths = write_sharded(str(tmp_path / "a"), cfg, users_per_file=100)
    files = sorted((tmp_path / "a" / "interactions").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    parts = [pd.read_parquet(f) for f in files]
    for n, part in enumerate(parts):  # each file holds its own block of users, every one of them
        assert set(part["user_id"]) == set(range(1001 + 100 * n, 1001 + min(100 * (n + 1), 250)))
        assert (part.groupby("user_id").size() >= 5).all()
        assert not part.duplicated(["user_id", "item_id"]).any()
    ref = generate(cfg)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["items"]), ref["items"])
    users = pd.read_parquet(paths["users"])
    assert users["user_id"].tolist() == ref["users"]["user_id"].tolist()
    # The same taste groups behind the hints: hints are right 70% of the time in both, so they mostly agree.
    assert (users["taste"] == ref["users"]["taste"]).mean() > 0.45
    assert set(pd.concat(parts)["item_id"]) <= set(ref["items"]["item_id"])
    write_sharded(str(tmp_path / "b"), cfg, users_per_file=100)
    for f in files:
        pd.testing.assert_frame_equal(pd.read_parquet(f), pd.read_parquet(tmp_path / "b" / "interactions" / f.name))


def _stage_files(run_root) -> dict:
    """Every table the data stage wrote, by directory, in file-name order; meta.json without its timing."""
    out = {}
    for part in ("sequences", "train", "val", "test"):
        out[part] = [pd.read_parquet(f) for f in sorted((run_root / "data" / part).glob("*.parquet"))]
    for name in ("users.parquet", "items.parquet"):
        out[name] = pd.read_parquet(run_root / "data" / name)
    meta = json.loads((run_root / "data" / "meta.json").read_text())
    meta.pop("seconds")
    out["meta"] = meta
    return out


def test_in_process_path_writes_what_ray_data_writes(tmp_path, fmt="csv"):
    """A small log prepared in this process gives the files Ray Data gives, file for file and row for row
    (string ids, ties, duplicates, short users, several partitions, inline user and multi-valued item
    features): training then sees the same batches. CSV, where the two readers infer the column types each
    on their own (Parquet carries them; Ray Data reads Parquet in the [ray_data] error tests below)."""
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({"uid": [f"user-{u}" for u in rng.integers(0, 180, n)], "iid": rng.integers(0, 90, n),
                       "ts": rng.integers(0, 40, n)})  # few timestamps: many ties
    short = pd.DataFrame({"uid": ["short-1", "short-1", "short-2"], "iid": [1, 2, 3], "ts": [5, 6, 7]})
    df = pd.concat([df, df.iloc[:25], short])  # duplicate rows, users with too few interactions
    df["segment"] = ["g" + str(len(u) % 3) for u in df["uid"]]
    df["tags"] = [f"c{i % 4}|x{i % 3}" for i in df["iid"]]
    path = tmp_path / f"log.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    written, lines = {}, []
    for stage in ("ray_data", "in_process"):
        cfg = _table_cfg(tmp_path / stage, path, stage, user_col="uid", item_col="iid", time_col="ts", num_partitions=5,
                         user_feature_cols=["segment"], item_feature_cols=["tags"], multi_value_cols=["tags"])
        preprocess(cfg, RunDir(cfg.run_dir), log=lines.append)
        written[stage] = _stage_files(tmp_path / stage / "run")
    assert any("in this process" in line for line in lines) and not all("in this process" in line for line in lines)
    ray_data, in_process = written["ray_data"], written["in_process"]
    assert ray_data["meta"] == in_process["meta"]
    assert ray_data["meta"]["duplicate_rows_dropped"] >= 25 and ray_data["meta"]["dropped_users"] > 0
    assert set(ray_data["meta"]["item_features"]["tags"]["values"]) == {"c0", "c1", "c2", "c3", "x0", "x1", "x2"}
    assert set(ray_data["meta"]["user_features"]["segment"]["values"]) == {"g0", "g1", "g2"}
    assert len(ray_data["sequences"]) == 5
    for key in ray_data:
        if key == "meta":
            continue
        a, b = ray_data[key], in_process[key]
        if isinstance(a, list):
            assert len(a) == len(b), key
            for x, y in zip(a, b):
                pd.testing.assert_frame_equal(x, y, obj=key)
        else:
            pd.testing.assert_frame_equal(a, b, obj=key)


def test_small_log_threshold(tmp_path):
    """data.in_process_max_rows: exact for parquet (footers) and in-memory logs, a size estimate for CSV."""
    df = pd.DataFrame({"user_id": np.arange(1000) % 50, "item_id": np.arange(1000) % 7, "timestamp": np.arange(1000)})
    df.to_parquet(tmp_path / "log.parquet", index=False)
    local = load_source(DataConfig(source="table", path=str(tmp_path / "log.parquet"))).local
    assert local.has_at_most(1000) and not local.has_at_most(999)
    assert local.read().column_names == ["user_id", "item_id", "timestamp"] and local.read().num_rows == 1000
    df.to_csv(tmp_path / "log.csv", index=False)  # ~10 bytes a row here: estimated at about 1000 rows
    local = load_source(DataConfig(source="table", path=str(tmp_path / "log.csv"))).local
    assert local.has_at_most(2000) and not local.has_at_most(100)
    synthetic = load_source(DataConfig(source="synthetic")).local
    assert synthetic.has_at_most(synthetic.read().num_rows) and not synthetic.has_at_most(synthetic.read().num_rows - 1)
