"""Read interactions and attributes into one normalized shape.

Every source yields a `RawData`:
  interactions  ray.data.Dataset with columns user_id, item_id, timestamp (float64 seconds)
  users / items pandas DataFrames keyed by user_id / item_id with attribute columns (one row per id), or None
  local        the same log read in this process by pyarrow alone (`LocalLog`), for logs small enough
               that the data stage skips Ray Data's fixed cost; None where a source cannot offer it
Attribute tables hold one row per distinct id, so they may live on the driver; the interaction log
does only below the data stage's `data.in_process_max_rows`.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from ray_recall.config import DataConfig
from ray_recall.errors import DataError

USER, ITEM, TIME = "user_id", "item_id", "timestamp"


@dataclass(frozen=True)
class LocalLog:
    """The interaction log as one pyarrow read in this process: the same files, options and columns as the Dataset."""

    fs: pafs.FileSystem | None
    files: tuple[str, ...]
    file_format: pads.FileFormat | None  # None: an in-memory table
    columns: dict[str, str]  # column read -> normalized name (user_id, item_id, timestamp)
    table: pa.Table | None = None

    def has_at_most(self, max_rows: int) -> bool:
        """Whether the log has at most `max_rows` rows: exact for parquet and in-memory logs, estimated from the
        size for CSV (>= 10 bytes a row; 2 if compressed). Parquet footers are read only when the bytes allow it."""
        if self.table is not None:
            return self.table.num_rows <= max_rows
        sizes = [info.size for info in self.fs.get_file_info(list(self.files))]
        if isinstance(self.file_format, pads.ParquetFileFormat):
            if sum(sizes) > 64 * max_rows:
                return False
            return sum(pq.ParquetFile(self.fs.open_input_file(f)).metadata.num_rows for f in self.files) <= max_rows
        compressed = sum(size for f, size in zip(self.files, sizes) if f.endswith((".gz", ".bz2", ".zst", ".lz4")))
        return (sum(sizes) - compressed) / 10 + compressed / 2 <= max_rows

    def read(self) -> pa.Table:
        if self.table is not None:
            return self.table
        table = self._dataset().to_table(columns=list(self.columns))
        return table.rename_columns([self.columns[c] for c in table.column_names])

    def attributes(self, key: str, cols: list[str]) -> pd.DataFrame:
        """Attribute columns stored inline in the log: one row per id (the last seen in file order), as
        `_attributes_from_log` gives them from the Dataset."""
        return self._dataset().to_table(columns=[key] + cols).to_pandas().drop_duplicates(key, keep="last")

    def _dataset(self) -> pads.Dataset:
        return pads.dataset(list(self.files), filesystem=self.fs, format=self.file_format)


def _local_log(path: str, file_format: pads.FileFormat, columns: dict[str, str],
               extensions: tuple[str, ...] = ()) -> LocalLog | None:
    """The files Ray Data reads at `path` (a file, or a directory's files with one of `extensions`)."""
    try:
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                           if f.type == pafs.FileType.File and not os.path.basename(f.path).startswith((".", "_"))
                           and (not extensions or f.path.endswith(extensions)))
        else:
            files = [root]
    except (OSError, ValueError, pa.ArrowException):
        return None  # Ray Data reports what is wrong with the path
    return LocalLog(fs, tuple(files), file_format, columns) if files else None


@dataclass
class RawData:
    interactions: ray.data.Dataset
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    user_feature_cols: tuple[str, ...] = ()
    item_feature_cols: tuple[str, ...] = ()
    multi_value_cols: tuple[str, ...] = ()
    multi_value_sep: str = "|"
    title_col: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    local: LocalLog | None = None
    column_names: dict[str, str] = field(default_factory=dict)  # user_id | item_id | timestamp -> as errors name it


# --------------------------------------------------------------------------------------------
# MovieLens


ML_GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                  "War", "Western"]


def bundled_ml100k_dir() -> str:
    """Directory of MovieLens-100K as shipped inside the recbole 1.2.1 wheel (package data only: recbole is not imported)."""
    spec = importlib.util.find_spec("recbole")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MovieLens-100K is read from the recbole 1.2.1 wheel, which is not installed: "
                        "pip install --no-deps recbole==1.2.1")
    path = os.path.join(list(spec.submodule_search_locations)[0], "dataset_example", "ml-100k")
    if not os.path.exists(os.path.join(path, "ml-100k.inter")):
        raise DataError(f"{path} has no ml-100k.inter; reinstall with pip install --no-deps recbole==1.2.1")
    return path


def _read_atomic(path: str) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header 'name:type'."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def _csv_log(path: str, parse_options: pacsv.ParseOptions | None = None, read_options: pacsv.ReadOptions | None = None,
             columns: dict[str, str] | None = None) -> tuple[ray.data.Dataset, LocalLog | None]:
    """A CSV log as a Ray Dataset and as a LocalLog, read with the same options; `columns`: source -> normalized name."""
    columns = columns or {USER: USER, ITEM: ITEM, TIME: TIME}
    kwargs = {k: v for k, v in (("parse_options", parse_options), ("read_options", read_options)) if v is not None}
    return _normalized(ray.data.read_csv(path, **kwargs), columns), _local_log(path, pads.CsvFileFormat(**kwargs), columns)


def _normalized(ds: ray.data.Dataset, columns: dict[str, str]) -> ray.data.Dataset:
    """The log's three columns, renamed source -> normalized name (user_id, item_id, timestamp)."""
    ds = ds.select_columns(list(columns))
    renamed = {k: v for k, v in columns.items() if k != v}
    return ds.rename_columns(renamed) if renamed else ds


def _movielens_bundled() -> RawData:
    root = bundled_ml100k_dir()
    inter, local = _csv_log(
        os.path.join(root, "ml-100k.inter"),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"], skip_rows=1))
    users = _read_atomic(os.path.join(root, "ml-100k.user"))
    users["user_id"] = users["user_id"].astype(np.int64)
    items = _read_atomic(os.path.join(root, "ml-100k.item"))
    items["item_id"] = items["item_id"].astype(np.int64)
    items = items.rename(columns={"movie_title": "title", "release_year": "year"})
    items["genre"] = items.pop("class").str.split(" ").str.join("|")
    items["title"] = items["title"] + " (" + items["year"] + ")"
    return RawData(inter, users[["user_id", "age", "gender", "occupation"]], items[["item_id", "title", "genre", "year"]],
                   ("age", "gender", "occupation"), ("genre", "year"), ("genre",), "|", "title",
                   f"MovieLens-100K ({root})", local=local)


def _movielens_dir(path: str) -> RawData:
    """GroupLens layouts: ml-100k (u.data/u.user/u.item), ml-1m (*.dat), ml-latest (ratings.csv/movies.csv)."""
    j = lambda name: os.path.join(path, name)  # noqa: E731
    if os.path.exists(j("u.data")):
        inter, local = _csv_log(j("u.data"), parse_options=pacsv.ParseOptions(delimiter="\t"),
                                read_options=pacsv.ReadOptions(column_names=[USER, ITEM, "rating", TIME]))
        users = pd.read_csv(j("u.user"), sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip"], dtype=str)
        users["user_id"] = users["user_id"].astype(np.int64)
        raw_items = pd.read_csv(j("u.item"), sep="|", header=None, encoding="latin-1", dtype=str)
        flags = raw_items.iloc[:, 5:5 + len(ML_GENRES_100K)].astype(int).to_numpy()
        items = pd.DataFrame({
            "item_id": raw_items[0].astype(np.int64),
            "title": raw_items[1],
            "genre": ["|".join(g for g, f in zip(ML_GENRES_100K, row) if f) for row in flags],
            "year": raw_items[2].fillna("").str[-4:],
        })
        return RawData(inter, users[["user_id", "age", "gender", "occupation"]], items, ("age", "gender", "occupation"),
                       ("genre", "year"), ("genre",), "|", "title", f"MovieLens ml-100k layout ({path})", local=local)
    if os.path.exists(j("ratings.dat")):
        # '::' separated; a ':' delimiter leaves empty columns between the fields, which are dropped.
        names = [USER, "_a", ITEM, "_b", "rating", "_c", TIME]
        inter, local = _csv_log(j("ratings.dat"), parse_options=pacsv.ParseOptions(delimiter=":"),
                                read_options=pacsv.ReadOptions(column_names=names))
        users = pd.read_csv(j("users.dat"), sep="::", engine="python", header=None,
                            names=["user_id", "gender", "age", "occupation", "zip"], dtype=str)
        users["user_id"] = users["user_id"].astype(np.int64)
        movies = pd.read_csv(j("movies.dat"), sep="::", engine="python", header=None, names=["item_id", "title", "genre"],
                             encoding="latin-1", dtype=str)
        movies["item_id"] = movies["item_id"].astype(np.int64)
        movies["year"] = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].fillna("")
        return RawData(inter, users[["user_id", "age", "gender", "occupation"]], movies, ("age", "gender", "occupation"),
                       ("genre", "year"), ("genre",), "|", "title", f"MovieLens ml-1m layout ({path})", local=local)
    if os.path.exists(j("ratings.csv")):
        inter, local = _csv_log(j("ratings.csv"), columns={"userId": USER, "movieId": ITEM, TIME: TIME})
        movies = pd.read_csv(j("movies.csv"), dtype=str).rename(columns={"movieId": "item_id", "genres": "genre"})
        movies["item_id"] = movies["item_id"].astype(np.int64)
        movies["year"] = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].fillna("")
        return RawData(inter, None, movies, (), ("genre", "year"), ("genre",), "|", "title", f"MovieLens ml-latest layout ({path})",
                       local=local)
    found = sorted(os.listdir(path)) if os.path.isdir(path) else []
    raise DataError(f"{path}: not a MovieLens directory (expected u.data, ratings.dat or ratings.csv; found {found})")


# --------------------------------------------------------------------------------------------
# Any table


def _table_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lower = path.split("?", 1)[0].rstrip("/").lower()  # a URI may carry options after '?'
    for suffixes, name in (((".csv", ".csv.gz"), "csv"), ((".tsv", ".tsv.gz", ".tab"), "tsv"), (ATOMIC_SUFFIXES, "atomic")):
        if lower.endswith(suffixes):
            return name
    return "parquet"


# RecBole's atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html): tab-separated, no quoting,
# a header of 'name:type'. Ids ('token') stay strings, as RecBole keeps them; 'float' columns are numbers.
ATOMIC_SUFFIXES = (".inter", ".user", ".item")
_ATOMIC_TYPES = {"token": pa.string(), "token_seq": pa.string(), "float": pa.float64(), "float_seq": pa.string()}


def _csv_options(path: str, fmt: str) -> dict:
    """The options of a text format ('csv' | 'tsv' | 'atomic'), as keyword arguments of both ray.data.read_csv
    and pyarrow's CsvFileFormat (so the two readers agree)."""
    if fmt == "csv":
        return {}
    if fmt == "tsv":
        return {"parse_options": pacsv.ParseOptions(delimiter="\t")}
    header = _first_line_of(path)
    names, types = [], {}
    for field in header.split("\t"):
        name, _, kind = field.strip().partition(":")
        if not name or kind not in _ATOMIC_TYPES:
            raise DataError(f"{path}: not a RecBole atomic file: header field {field!r} is not 'name:type' with type one "
                            f"of {sorted(_ATOMIC_TYPES)} (data.format; 'tsv' reads a plain tab-separated header)")
        names.append(name)
        types[name] = _ATOMIC_TYPES[kind]
    return {"parse_options": pacsv.ParseOptions(delimiter="\t", quote_char=False),
            "read_options": pacsv.ReadOptions(column_names=names, skip_rows=1),
            "convert_options": pacsv.ConvertOptions(column_types=types)}


def _first_line_of(path: str) -> str:
    """The first line of a text file (the first of a directory's files, in the order the readers take them)."""
    try:
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        if fs.get_file_info(root).type == pafs.FileType.Directory:
            files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                           if f.type == pafs.FileType.File and not os.path.basename(f.path).startswith((".", "_")))
            if not files:
                raise DataError(f"{path}: no files in the directory")
            root = files[0]
        with fs.open_input_stream(root, compression="detect") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or directory") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read: {_first_line(e)}") from None
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    if not line.strip():
        raise DataError(f"{path}: no header line (the input is empty)")
    return line


def read_table_dataset(path: str, fmt: str) -> ray.data.Dataset:
    fmt = _table_format(path, fmt)
    try:
        if fmt != "parquet":
            return ray.data.read_csv(path, **_csv_options(path, fmt))
        return ray.data.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or directory") from None
    except (pa.ArrowInvalid, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {msg}") from None


def _read_attribute_table(path: str, fmt: str, key: str) -> pd.DataFrame:
    df = read_table_dataset(path, fmt).to_pandas()
    if key not in df.columns:
        raise DataError(f"{path}: missing column {key!r}; found columns {list(df.columns)}")
    return df.drop_duplicates(key, keep="last")


def _table(cfg: DataConfig) -> RawData:
    ds = read_table_dataset(cfg.path, cfg.format)
    try:
        schema = ds.schema()
    except Exception as e:  # an empty or unreadable file surfaces on first read
        raise DataError(f"{cfg.path}: cannot read: {_first_line(e)}") from None
    if schema is None:  # readable but without a single row (e.g. a CSV header only)
        raise DataError(f"{cfg.path}: no interactions (the input is empty)")
    columns = schema.names
    users = items = None
    if cfg.user_table:
        users = _read_attribute_table(cfg.user_table, cfg.format, cfg.user_col)
    if cfg.item_table:
        items = _read_attribute_table(cfg.item_table, cfg.format, cfg.item_col)
    inline_user = [c for c in cfg.user_feature_cols if users is None or c not in users.columns]
    inline_item = [c for c in cfg.item_feature_cols + ((cfg.title_col,) if cfg.title_col else ())
                   if items is None or c not in items.columns]
    needed = [cfg.user_col, cfg.item_col, cfg.time_col] + inline_user + inline_item
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{cfg.path}: missing column {missing[0]!r} (config data.*_col / *_feature_cols); "
                        f"found columns {columns}")
    log_columns = {cfg.user_col: USER, cfg.item_col: ITEM, cfg.time_col: TIME}
    inter = _normalized(ds, log_columns)
    fmt = _table_format(cfg.path, cfg.format)
    local = _local_log(cfg.path, pads.ParquetFileFormat(), log_columns, (".parquet",)) if fmt == "parquet" else \
        _local_log(cfg.path, pads.CsvFileFormat(**_csv_options(cfg.path, fmt)), log_columns)
    # A log the data stage will read in this process gives its inline attributes from the same read, not
    # from two Ray Data jobs (seconds each, for a few rows).
    small = local is not None and cfg.in_process_max_rows > 0 and local.has_at_most(cfg.in_process_max_rows)

    def with_inline(base: pd.DataFrame | None, key: str, cols: list[str]) -> pd.DataFrame:
        attrs = local.attributes(key, cols) if small else _attributes_from_log(ds, key, cols)
        return attrs if base is None else base.merge(attrs, on=key, how="outer")

    if inline_user:
        users = with_inline(users, cfg.user_col, inline_user)
    if inline_item:
        items = with_inline(items, cfg.item_col, inline_item)
    if users is not None:
        users = users.rename(columns={cfg.user_col: USER})
    if items is not None:
        items = items.rename(columns={cfg.item_col: ITEM})
    names = {USER: f"{cfg.user_col!r} (data.user_col)", ITEM: f"{cfg.item_col!r} (data.item_col)",
             TIME: f"{cfg.time_col!r} (data.time_col)"}
    return RawData(inter, users, items, cfg.user_feature_cols, cfg.item_feature_cols, cfg.multi_value_cols,
                   cfg.multi_value_sep, cfg.title_col, f"table {cfg.path}", local=local, column_names=names)


def _dedupe_block(batch: pd.DataFrame, key: str) -> pd.DataFrame:
    return batch.drop_duplicates(key, keep="last")


def _attributes_from_log(ds: ray.data.Dataset, key: str, cols: list[str]) -> pd.DataFrame:
    """Attribute columns stored inline in the log: one row per id (the last seen), deduplicated per block first."""
    per_block = ds.select_columns([key] + cols).map_batches(_dedupe_block, fn_kwargs={"key": key}, batch_format="pandas")
    return per_block.to_pandas().drop_duplicates(key, keep="last")


def _synthetic(cfg: DataConfig) -> RawData:
    from ray_recall.stages.preprocess.synthetic import generate

    tables = generate(cfg.synthetic)
    log = tables["interactions"]
    local = LocalLog(None, (), None, {c: c for c in log.columns}, table=pa.Table.from_pandas(log, preserve_index=False))
    return RawData(ray.data.from_pandas(log), tables["users"], tables["items"], ("taste",), ("category",),
                   (), "|", "title", f"synthetic {cfg.synthetic}", local=local)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def declared_features(cfg: DataConfig) -> tuple[dict[str, bool], dict[str, bool]] | None:
    """The user and item feature names the source will give ({name: multi-valued}), without reading the log.

    None where that cannot be told without reading (a MovieLens directory that is not there yet).
    """
    if cfg.source == "synthetic":
        return {"taste": False}, {"category": False}
    if cfg.source == "movielens":
        root = cfg.path
        if root is not None and not os.path.exists(os.path.join(root, "u.data")) \
                and not os.path.exists(os.path.join(root, "ratings.dat")):
            if os.path.exists(os.path.join(root, "ratings.csv")):
                return {}, {"genre": True, "year": False}
            return None
        return {c: False for c in ("age", "gender", "occupation")}, {"genre": True, "year": False}
    multi = set(cfg.multi_value_cols)
    return {c: c in multi for c in cfg.user_feature_cols}, {c: c in multi for c in cfg.item_feature_cols}


def load_source(cfg: DataConfig) -> RawData:
    """Open the configured source. Reading is lazy; validation happens while the log streams."""
    if cfg.source == "synthetic":
        return _synthetic(cfg)
    if cfg.source == "movielens":
        if cfg.path is None:
            return _movielens_bundled()
        if not os.path.exists(cfg.path):
            raise DataError(f"{cfg.path}: no such MovieLens directory")
        return _movielens_dir(cfg.path)
    return _table(cfg)


# --------------------------------------------------------------------------------------------
# Validation of the normalized log, one batch at a time


def validate_and_normalize(batch: pa.Table, source: str, names: dict[str, str] | None = None) -> pa.Table:
    """Check one batch of (user_id, item_id, timestamp): no missing or empty ids, no negative numeric ids, timestamps
    that are numbers or date-times.

    Returns the batch with the timestamp as float64 seconds since the epoch: numbers as they are, date-times
    (typed, or strings in ISO 8601; a string without a zone is read as UTC, as pyarrow's CSV reader reads it)
    converted. Raises DataError naming the source, the column as the input names it (`names`: normalized name ->
    how to show it, e.g. {"timestamp": "'ts' (data.time_col)"}) and the value.
    """
    shown = {col: (names or {}).get(col) or repr(col) for col in (USER, ITEM, TIME)}
    for col in (USER, ITEM):
        arr = batch.column(col)
        if arr.null_count:
            raise DataError(f"{source}: column {shown[col]} has null values ({arr.null_count} in one block)")
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            if pc.any(pc.less(arr, 0)).as_py():
                bad = pc.min(arr).as_py()
                raise DataError(f"{source}: column {shown[col]} has a negative id ({bad})")
        elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            # A CSV's empty field reads as an empty string, not a null: an id it cannot be.
            empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)).as_py() or 0
            if empty:
                raise DataError(f"{source}: column {shown[col]} has empty ids ({empty} in one block)")
    ts = batch.column(TIME)
    if ts.null_count:
        raise DataError(f"{source}: column {shown[TIME]} has missing values ({ts.null_count} in one block)")
    if not (pa.types.is_timestamp(ts.type) or pa.types.is_date(ts.type)
            or pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type)):
        ts = _parse_times(pc.cast(ts, pa.string()), source, shown[TIME])
    if pa.types.is_timestamp(ts.type) or pa.types.is_date(ts.type):
        # Microseconds over a float division: the fraction of a second orders a user's events within it.
        ts = pc.divide(pc.cast(pc.cast(pc.cast(ts, pa.timestamp("us")), pa.int64()), pa.float64()), 1e6)
    ts = pc.cast(ts, pa.float64())
    if not pc.all(pc.is_finite(ts)).as_py():
        bad = next(v for v in ts.to_pylist() if not np.isfinite(v))
        raise DataError(f"{source}: column {shown[TIME]} holds {bad}, not a finite time")
    return batch.set_column(batch.schema.get_field_index(TIME), TIME, ts)


# What a timestamp string may be, tried in turn on a whole column: a number, an ISO 8601 date-time without a zone
# (UTC), one with a zone ('Z', '+01:00').
_TIME_PARSES = (pa.float64(), pa.timestamp("us"), pa.timestamp("us", tz="UTC"))


def _parse_times(values, source: str, shown: str):
    for kind in _TIME_PARSES:
        try:
            return pc.cast(values, kind)
        except pa.ArrowInvalid:
            continue
    strings = values.to_pylist()
    bad = next((v for v in strings if not (_is_number(v) or _is_datetime(v))), None)
    if bad is not None:
        raise DataError(f"{source}: column {shown} holds {bad!r}, which is neither a number nor an ISO 8601 date-time")
    numbers = [v for v in strings if _is_number(v)]
    if numbers:
        when = next(v for v in strings if not _is_number(v))
        raise DataError(f"{source}: column {shown} mixes numbers and date-times (e.g. {numbers[0]!r} and {when!r}): "
                        "give one kind")
    # ISO 8601 forms pyarrow's parser does not take, or date-times with and without a zone side by side.
    return pa.array([_utc_seconds(v) for v in strings], pa.float64())


def _utc_seconds(v: str) -> float:
    when = datetime.datetime.fromisoformat(v)
    return (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _is_datetime(v) -> bool:
    try:
        datetime.datetime.fromisoformat(v)
        return True
    except (TypeError, ValueError):
        return False


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
