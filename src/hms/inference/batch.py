"""Batched prediction: a network over a loader (validation, OOF, test), with the left/right
TTA, and the test predictions of one input config with the per-row fallback and its limit.
The fold loop and `hms.inference` both call it."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hms import config as C
from hms.data import schema
from hms.models.network import widened
from hms.models.device import autocast


def to_device(batch: dict, device) -> dict:
    """Moves a loader batch to the device, widening its float16 inputs to float32 there."""
    return widened({k: v.to(device, non_blocking=True) for k, v in batch.items()})


def mirrored(batch: dict) -> dict:
    """The left/right-swapped copy of a batch (test-time augmentation)."""
    out = dict(batch)
    out["signal"] = batch["signal"][:, schema.mirror_order(batch["signal"].shape[1])]
    out["spec"] = batch["spec"][:, schema.MIRROR_PANELS]
    return out


def padded(batch: dict, size: int) -> dict:
    """The batch with its first item repeated up to `size` items: a last, smaller evaluation
    batch takes the full batch's shape (one shape for cuDNN's autotuning; eval mode, so the
    extra items change nothing but their own discarded rows)."""
    n = len(batch["signal"])
    if n >= size:
        return batch
    return {k: torch.cat([v, v[:1].expand(size - n, *v.shape[1:])]) for k, v in batch.items()}


@torch.no_grad()
def predict_probs(net: torch.nn.Module, loader: DataLoader, device, tta_lr_swap: bool = False,
                  amp: bool = False, progress: bool = False, desc: str = "predict",
                  precision: str | None = None) -> np.ndarray:
    """Softmax probabilities (n, 6) float64, in the loader's order. precision: 'bf16' | 'fp16' |
    'fp32' (hms.models.device); None: fp16 autocast when amp, else fp32. Probabilities stay on
    the device until the end: one transfer, no sync per batch."""
    device = torch.device(device)
    precision = precision or ("fp16" if amp else "fp32")
    net.eval()
    out = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = to_device(batch, device)
        n = len(batch["signal"])
        if device.type == "cuda" and loader.batch_size:
            batch = padded(batch, loader.batch_size)
        with autocast(device, precision):
            probs = torch.softmax(net(batch).float(), dim=1)
            if tta_lr_swap:
                probs = (probs + torch.softmax(net(mirrored(batch)).float(), dim=1)) / 2
        out.append(probs[:n])
    return torch.cat(out).double().cpu().numpy() if out else np.zeros((0, 6))


# ---------------------------------------------------------------- test predictions

def test_inputs(cfg, progress: bool = False):
    """(test table, eeg cache, spec cache, rows that can be predicted): missing or unreadable
    test files are marked in the caches instead of stopping the run."""
    from hms.cache.store import build_cache, open_cache
    from hms.data import io
    from hms.models.factory import uses_kaggle_spec

    data_dir = C.data_dir(cfg)
    test = io.read_test_csv(data_dir / schema.TEST_CSV)
    eeg, spec = (open_cache(build_cache(cfg, data_dir, "test", kind, test, progress=progress, skip_bad=True))
                 for kind in ("eeg", "spec"))
    bad = test.eeg_id.isin(eeg.bad_ids())
    if uses_kaggle_spec(cfg):
        bad |= test.spectrogram_id.isin(spec.bad_ids())
    return test, eeg, spec, ~bad.to_numpy()


MAX_FALLBACK_SHARE = 0.05  # more test rows than this without readable files is a format bug


def check_fallback(test: pd.DataFrame, ok: np.ndarray, caches: list) -> None:
    """Stop when every row, or more than MAX_FALLBACK_SHARE of them, would get the prior: a
    submission of priors looks valid and wastes a day's submission."""
    from hms.data.io import HMSDataError

    n_bad = int((~ok).sum())
    if n_bad and (n_bad == len(ok) or n_bad > MAX_FALLBACK_SHARE * len(ok)):
        reasons = {}
        for cache in caches:
            reasons.update(cache.bad_reasons())
        examples = list(dict.fromkeys(reasons.values()))[:3]
        raise HMSDataError(
            f"{n_bad} of {len(ok)} test rows have missing or unreadable files (more than "
            f"{MAX_FALLBACK_SHARE:.0%}: a data format problem, not bad luck); causes: {examples}")


def predict_test(cfg, nets: list, device, prior=None, amp: bool = False, progress: bool = False,
                 precision: str | None = None) -> pd.DataFrame:
    """Mean probabilities of `nets` (folds sharing one input config) for every test.csv row, in
    its order; rows whose files are missing or unreadable get `prior` (uniform if None) and a
    warning naming them, up to MAX_FALLBACK_SHARE of the rows (beyond that: an error)."""
    from hms.inputs.dataset import make_dataset
    from hms.inputs.loaders import make_loader
    from hms.models.factory import uses_kaggle_spec

    def probs_of(rows, eeg, spec):
        loader = make_loader(make_dataset(cfg, rows, (eeg, spec), "eval"), cfg, shuffle=False)
        return np.mean([predict_probs(net, loader, device, tta_lr_swap=bool(cfg.infer.tta_lr_swap), amp=amp,
                                      precision=precision, progress=progress, desc=f"predict {cfg.name}")
                        for net in nets], axis=0)

    return test_frame(cfg, probs_of, prior, uses_kaggle_spec(cfg), progress)


def test_frame(cfg, probs_of, prior=None, reads_spec: bool = True, progress: bool = False) -> pd.DataFrame:
    """Every test.csv row's probabilities, in its order: probs_of(rows, eeg cache, spec cache) for
    the rows whose files could be read, `prior` (uniform if None) with a warning naming the others
    (at most MAX_FALLBACK_SHARE of them). Shared by the networks' and the trees' predictions."""
    test, eeg, spec, ok = test_inputs(cfg, progress)
    check_fallback(test, ok, [eeg, spec] if reads_spec else [eeg])
    probs = np.tile(np.asarray(prior if prior is not None else np.full(6, 1 / 6), dtype=np.float64), (len(test), 1))
    if (~ok).any():
        warnings.warn(f"{(~ok).sum()} test rows have missing or unreadable files and get the prior: "
                      f"eeg_id {test.eeg_id[~ok].tolist()[:20]}", stacklevel=3)
    if ok.any():
        probs[ok] = probs_of(test[ok], eeg, spec)
    out = pd.DataFrame(probs, columns=list(schema.VOTE_COLUMNS))
    out.insert(0, "eeg_id", test["eeg_id"].to_numpy())
    return out
