"""The project's label spaces. Loaders map every dataset into these; cards list them."""

from __future__ import annotations

# ICDR-style diabetic retinopathy grades, index == grade.
DR_GRADES: tuple[str, ...] = ("no_dr", "mild", "moderate", "severe", "proliferative")

# Kermany retinal OCT classes, in the order the original dataset folders sort.
OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")

# The 14 NIH ChestX-ray14 findings, official spelling and order (Wang et al. 2017).
CXR_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

MODALITIES: tuple[str, ...] = ("fundus", "oct", "cxr")
