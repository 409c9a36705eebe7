"""Short-Term Memory Convolutions: U-Nets that run offline and as exact streams from the same weights."""

from stmc.enhancer import Enhancer
from stmc.metrics import si_snr, si_snri
from stmc.streaming import METHODS, streaming
from stmc.unet import UNet

__all__ = ["METHODS", "Enhancer", "UNet", "si_snr", "si_snri", "streaming"]
