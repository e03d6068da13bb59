"""The end-of-run table: per experiment and ensemble, OOF KL (all / high-vote rows) and,
where the simulator's answers exist, test KL next to the prior and the oracle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hms.data import schema
from hms.metric import kl_score


def load_answers(data_dir: Path) -> pd.DataFrame | None:
    path = Path(data_dir) / schema.ANSWERS_DIR / schema.TEST_ANSWERS_CSV
    return pd.read_csv(path) if path.is_file() else None


def test_scores(pred: pd.DataFrame, answers: pd.DataFrame, prior: np.ndarray) -> dict:
    """Test KL of a prediction frame and of the prior/oracle, on the same rows."""
    merged = pred.merge(answers, on="eeg_id", suffixes=("_pred", ""), validate="one_to_one")
    votes = merged[list(schema.VOTE_COLUMNS)].to_numpy()
    model = kl_score(votes, merged[[f"{c}_pred" for c in schema.VOTE_COLUMNS]].to_numpy())
    oracle = kl_score(votes, merged[list(schema.PSTAR_COLUMNS)].to_numpy())
    prior_kl = kl_score(votes, np.tile(prior, (len(votes), 1)))
    return {"test_kl": model, "prior_kl": prior_kl, "oracle_kl": oracle,
            "gap_closed": (prior_kl - model) / (prior_kl - oracle) if prior_kl > oracle else float("nan")}


def summary_table(rows: list[dict]) -> str:
    cols = ["model", "oof_kl", "oof_kl_high", "test_kl", "prior_kl", "oracle_kl", "gap_closed"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    return df.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-")
