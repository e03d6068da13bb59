import numpy as np
import pandas as pd
import pytest
from scipy.special import rel_entr

from hms import metric
from hms.data import schema


def test_hand_computed_value():
    votes = np.array([[1, 0, 0, 0, 0, 3]], dtype=float)  # q = (0.25, 0, 0, 0, 0, 0.75)
    pred = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.1)
    assert metric.kl_score(votes, pred) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_rel_entr_on_random_rows():
    rng = np.random.default_rng(0)
    votes = rng.integers(0, 5, size=(200, 6)).astype(float)
    votes[votes.sum(1) == 0, 0] = 1
    pred = rng.dirichlet(np.ones(6), size=200)
    q = votes / votes.sum(1, keepdims=True)
    reference = rel_entr(q, np.clip(pred, 1e-15, 1 - 1e-15)).sum(1).mean()
    assert metric.kl_score(votes, pred) == pytest.approx(reference, rel=1e-12)


def test_zero_prediction_is_clipped_not_infinite():
    votes = np.array([[1.0, 0, 0, 0, 0, 0]])
    pred = np.array([[0.0, 0.2, 0.2, 0.2, 0.2, 0.2]])
    assert metric.kl_score(votes, pred) == pytest.approx(-np.log(1e-15), rel=1e-9)  # about 34.5


def test_perfect_prediction_scores_zero():
    votes = np.array([[0, 2, 2, 0, 0, 0], [5, 0, 0, 0, 0, 5]], dtype=float)
    assert metric.kl_score(votes, votes / votes.sum(1, keepdims=True)) == pytest.approx(0, abs=1e-12)


def _frame(eeg_ids, probs):
    df = pd.DataFrame(probs, columns=list(schema.VOTE_COLUMNS))
    df.insert(0, "eeg_id", eeg_ids)
    return df


def test_score_frames_matches_rows_by_eeg_id_keeping_duplicates_in_order():
    votes = np.array([[1, 0, 0, 0, 0, 1], [0, 3, 0, 0, 0, 1], [0, 0, 0, 0, 2, 2]], float)
    preds = np.array([[0.4, 0.1, 0.05, 0.05, 0.1, 0.3], [0.1, 0.6, 0.1, 0.05, 0.05, 0.1],
                      [0.1, 0.1, 0.1, 0.1, 0.3, 0.3]])
    solution = _frame([7, 9, 7], votes)
    shuffled = _frame([9, 7, 7], preds[[1, 0, 2]])  # the two eeg_id 7 rows keep their order
    assert metric.score_frames(solution, shuffled) == pytest.approx(metric.kl_score(votes, preds))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p * 2, "between 0 and 1"),
    (lambda p: p * 0.5, "sum to 1"),
    (lambda p: np.where(p > 0.5, np.nan, p), "NaN"),
])
def test_submission_errors_like_the_official_scorer(mutate, message):
    probs = np.full((2, 6), 1 / 6)
    probs[0] = [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]
    sub = _frame([1, 2], mutate(probs))
    with pytest.raises(metric.ParticipantVisibleError, match=message):
        metric.score_frames(_frame([1, 2], np.ones((2, 6))), sub)


def test_missing_rows_are_named():
    sol = _frame([1, 2], np.ones((2, 6)))
    with pytest.raises(metric.ParticipantVisibleError, match="eeg_id=2"):
        metric.score_frames(sol, _frame([1], np.full((1, 6), 1 / 6)))


def test_cli_score_prints_the_score(tmp_path, capsys):
    from hms.cli import main

    votes = np.array([[1, 0, 0, 0, 0, 3]], float)
    pred = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    _frame([3], votes).to_csv(tmp_path / "sol.csv", index=False)
    _frame([3], pred).to_csv(tmp_path / "sub.csv", index=False)
    assert main(["score", str(tmp_path / "sol.csv"), str(tmp_path / "sub.csv")]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(metric.kl_score(votes, pred), abs=1e-6)


def test_paired_bootstrap_of_a_submission_against_itself_is_exactly_zero():
    rows = np.random.default_rng(1).gamma(2.0, 0.2, size=300)
    assert metric.paired_bootstrap(rows, rows) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_gives_the_score_ratio_and_an_interval_around_it():
    rng = np.random.default_rng(2)
    rows_a = rng.gamma(2.0, 0.2, size=1000)
    rows_b = rows_a * 0.9 + rng.normal(0, 0.01, size=1000).clip(-0.05, 0.05) + 0.05
    change, low, high = metric.paired_bootstrap(rows_a, rows_b)
    assert change == pytest.approx(rows_b.mean() / rows_a.mean() - 1)
    assert low < change < high
    # pairing removes the rows' shared spread: the interval is far narrower than the unpaired one
    unpaired = [rng.choice(rows_b, 1000).mean() / rng.choice(rows_a, 1000).mean() - 1 for _ in range(2000)]
    assert change - 0.01 < low and high < change + 0.01
    assert 5 * (high - low) < np.ptp(np.percentile(unpaired, [2.5, 97.5]))


def test_paired_bootstrap_refuses_rows_of_two_lengths():
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        metric.paired_bootstrap(np.ones(3), np.ones(2))


def test_cli_score_of_two_submissions_prints_both_scores_and_the_paired_change(tmp_path, capsys):
    from hms.cli import main

    rng = np.random.default_rng(3)
    votes = rng.integers(0, 5, size=(200, 6)).astype(float)
    votes[:, 5] += 1
    better = 0.7 * metric.normalise_votes(votes) + 0.3 / 6
    worse = np.full((200, 6), 1 / 6)
    ids = np.arange(200) + 10
    _frame(ids, votes).to_csv(tmp_path / "sol.csv", index=False)
    _frame(ids, worse).to_csv(tmp_path / "a.csv", index=False)
    _frame(ids[::-1], better[::-1]).to_csv(tmp_path / "b.csv", index=False)  # row order must not matter
    assert main(["score", str(tmp_path / "sol.csv"), str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    first, second, change = capsys.readouterr().out.strip().splitlines()
    score_a, score_b = metric.kl_score(votes, worse), metric.kl_score(votes, better)
    assert float(first.rsplit(": ", 1)[1]) == pytest.approx(score_a, abs=1e-6)
    assert float(second.rsplit(": ", 1)[1]) == pytest.approx(score_b, abs=1e-6)
    assert change.startswith(f"second vs first: {score_b / score_a - 1:+.2%} (paired bootstrap over 200 rows")
