"""The batch keys every model, objective and data transform agrees on.

A training batch is a dict of tensors (numpy arrays before collation):

    USER      [B]      int64  dense user id (0 = unknown user)
    HIST      [B, L]   int64  item history, oldest first, right-padded with 0
    HIST_LEN  [B]      int64  number of real items in HIST (the rest is padding)
    POS       [B]      int64  target (positive) item
    NEG       [B, N]   int64  sampled negative items (never one of the user's positives)
    POS_LOGQ  [B]      float  log sampling probability of POS under the sampler (logQ correction)
    NEG_LOGQ  [B, N]   float  log sampling probability of each NEG

An item batch is {ITEM: int64 tensor of any shape}.
"""

USER = "user_id"
HIST = "hist"
HIST_LEN = "hist_len"
POS = "pos_item"
NEG = "neg_items"
POS_LOGQ = "pos_logq"
NEG_LOGQ = "neg_logq"
ITEM = "item_id"

USER_KEYS = (USER, HIST, HIST_LEN)
