"""The model: temporal layers, the U-Net, the STFT, the waveform enhancer and the checkpoint format."""
