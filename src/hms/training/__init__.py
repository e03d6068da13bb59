"""Stage 5, `hms train`: datasets over the caches, augmentations, the network wrapper (device-side
cleaning, image building), the KL loss, batched prediction; how one run trains (loop), one of
its stages (stage: rows and low-vote weight) and where it stands (state, saved in last.pt), the
experiment around its runs (experiment), pseudo-label teachers (pseudo), runs spread over
several devices (schedule) and torchrun's helpers (dist)."""
