import numpy as np
import pandas as pd
import pytest

from hms.data import schema
from hms.inference.ensemble import load_oofs


def _oof(eeg_ids):
    n = len(eeg_ids)
    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(6), n)
    df = pd.DataFrame({"eeg_id": eeg_ids, "fold": 0, "total_votes": 12})
    df[list(schema.VOTE_COLUMNS)] = rng.dirichlet(np.ones(6), n)
    df[[f"{c}_target" for c in schema.CLASSES]] = target
    return df


def test_oof_rows_align_on_exact_ids_near_1e9(tmp_path):
    ids = 1_000_000_000 + np.arange(5) * 10
    for name, frame in (("a", _oof(ids)), ("b", _oof(ids)), ("c", _oof(ids + 1000))):
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "oof.csv", index=False)
    keys, preds = load_oofs([tmp_path / "a", tmp_path / "b"])
    assert preds.shape == (2, 5, 6)
    with pytest.raises(ValueError, match="covers other rows"):  # np.allclose called these equal
        load_oofs([tmp_path / "a", tmp_path / "c"])
