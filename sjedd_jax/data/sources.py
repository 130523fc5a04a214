"""Names of the image sources in prepared datasets (the manifest's ``source`` field).

The data layer knows which sources exist and which images an expansion made;
what a source means as a training target is each detector's business
(``detectors/<name>/labels.py``).
"""

REAL = "real"
# The four FF++ manipulation methods (and the synthetic world's families of the same names).
FFPP_METHODS = ("Deepfakes", "FaceSwap", "Face2Face", "NeuralTextures")
# Identity-swap methods whose crops may serve as expansion sources (SJEDD spec section 7).
SWAP_SOURCES = ("Deepfakes", "FaceSwap")
# Local-region forgeries made by the semantic expansion (one source per augmentation).
AUG_SOURCES = ("aug_eye", "aug_lip_mouth", "aug_nose")
# Every source an expansion may add (left out of evaluation): the regions and the X-ray-style blends.
EXPANSION_SOURCES = AUG_SOURCES + ("xray",)
