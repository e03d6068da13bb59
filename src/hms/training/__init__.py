"""`hms train`: how one run trains (loop: FoldRun by epochs, TreeRun fitted once), one of its
stages (stage: rows, epochs, lr, low-vote weight), where it stands (state, saved in last.pt), the
optimiser step (step), augmentations on the device (augment), the KL loss (losses), the
experiment around its runs (experiment), pseudo-label teachers (pseudo), memory estimates
(memory), epoch logging (tracking) and torchrun's helpers (dist). The network and its
checkpoints are hms.models; the datasets hms.inputs; batched prediction hms.inference."""
