"""Raw EEG -> model inputs: montage, cleaning filters, wavelet denoising, spectrograms."""
