"""The pipeline's stages, each a function `(cfg, run, log) -> summary` that reads and writes only the run directory.

    preprocess  interactions -> vocabularies, sequences, splits          (Ray Data)
    train       splits -> model                                          (Ray Train, DDP)
    embed       model -> item and user vectors                           (Ray Data actor pool)
    index       item vectors -> FAISS index
    evaluate    model, item vectors, test split -> exact full-ranking metrics (Ray Data actor pool)

No stage imports another; `ray_recall.pipeline` runs them in order.
"""
