"""Training: the LightningModule and its schedule (:mod:`.module`), the Hydra-driven run (:mod:`.run`)."""
