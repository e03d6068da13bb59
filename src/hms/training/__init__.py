"""Stage 5, `hms train`: datasets over the caches, augmentations, the network wrapper (device-side
cleaning, image building), the KL loss, batched prediction and the fold loop."""
