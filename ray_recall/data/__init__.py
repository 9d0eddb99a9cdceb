"""Reading interactions, fitting vocabularies, building sequences and negatives.

The notebook API (defined in `ray_recall.api`, loaded on first use so that workers importing
`ray_recall.data.<module>` pay nothing for it):

    load_movielens(name="ml-100k")           -> pandas DataFrame, one row per rating
    generate_seq_features(df, ...)           -> SeqData (runs the data stage on Ray Data)
    negative_sample(items_cnt_order, ratio)  -> [ratio] items, word2vec-style
"""

_API = ("load_movielens", "generate_seq_features", "negative_sample", "SeqData", "SeqSplit")

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from ray_recall import api

        return getattr(api, name)
    raise AttributeError(f"module 'ray_recall.data' has no attribute {name!r}")
