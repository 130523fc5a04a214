"""MC-LCR (Wang et al., KBS 2022): SSRB, patch spectra, PAPDA, MLP-Mixers, fusion heads and losses.

Spec: ``/work/shared/spec/mc_lcr.md``. ``modules`` holds the detector's own layers (the
Xception backbone lives in ``sjedd_jax.backbones.xception``), ``losses`` the BCE and
supervised contrastive losses.
"""
