"""Training augmentation, per modality, on the runtime's prepared uint8 image.

Order (and why), the same for every modality:

1. `edgescreen.runtime.prepare.prepare` at a working resolution (>= the model's input):
   the runtime's own crop/Ben Graham/mask (fundus) or windowing (CXR), so augmentation
   starts from exactly the picture the runtime will produce;
2. augmentation here, on uint8 HxWxC at that working resolution, so rotations and blurs
   do not throw away detail the final resize keeps;
3. `edgescreen.runtime.preprocess.to_tensor`: final resize, /255, mean/std, CHW.

Chest X-rays are never flipped horizontally: the heart's side is itself a finding
(dextrocardia, and every left/right label would be wrong).

Only fundus photos get the APTOS write-up's distortions and filters.  OCT B-scans and
chest X-rays keep small affine jitter and intensity changes: their findings are shapes
(the contour of retinal layers: drusen bumps, DME swelling; heart size and the lines of a
pneumothorax), which optical/grid warps would bend into or out of a finding, and
sharpen/emboss would add edges that read as layer boundaries or pleural lines.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

# albumentations checks PyPI for a newer version at import; edge and CI machines are offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

MODALITIES = ("fundus", "oct", "cxr")


def build_augmentation(modality: str, *, strength: float = 1.0) -> A.Compose:
    """The default training augmentation for a modality; `strength` scales magnitudes."""
    s = float(strength)
    if modality == "fundus":
        # The APTOS write-up's list (optical and grid distortion, flips, rotation, shift,
        # scale, RGB shift, brightness/contrast, Gaussian noise, blur, sharpen, emboss,
        # gamma, cutout), grouped so the costly-to-compound ones (two warps, two kernels)
        # are one-of.  Piecewise affine is left out: albumentations runs it at ~350 ms per
        # 192 px image (1000x a grid distortion, whose local warp is much the same).
        transforms = [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            # A fundus photo has no canonical "up" once the disc is centred: rotate freely,
            # filling with the black the circular mask already has outside the disc.
            A.Rotate(limit=180, border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.9),
            # Random shift and scale: the disc crop leaves the disc centred and full-frame,
            # so both stay small (a larger shift would push lesions out of the frame).
            A.Affine(
                scale=(1 - 0.1 * s, 1 + 0.1 * s),
                translate_percent=(-0.05 * s, 0.05 * s),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.5,
            ),
            # Lens-like barrel/pincushion and local grid warps: fundus cameras differ in
            # optics and the eye's curvature, not in which lesions are present.
            A.OneOf(
                [
                    A.OpticalDistortion(
                        distort_limit=0.3 * s, border_mode=cv2.BORDER_CONSTANT, fill=0
                    ),
                    A.GridDistortion(
                        num_steps=5, distort_limit=0.3 * s, border_mode=cv2.BORDER_CONSTANT, fill=0
                    ),
                ],
                p=0.3,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.7),
            A.RandomGamma(gamma_limit=(int(100 - 20 * s), int(100 + 20 * s)), p=0.5),
            A.HueSaturationValue(
                hue_shift_limit=int(5 * s), sat_shift_limit=int(10 * s), val_shift_limit=0, p=0.3
            ),
            A.RGBShift(r_shift_limit=10 * s, g_shift_limit=10 * s, b_shift_limit=10 * s, p=0.3),
            # Focus and sensor: out-of-focus photos blur, over-processed ones are sharpened;
            # emboss is the write-up's relief filter. Mild alphas keep microaneurysms
            # (a few pixels across) from being erased or invented.
            A.OneOf(
                [
                    A.GaussianBlur(blur_limit=(3, 5)),
                    A.Sharpen(alpha=(0.1 * s, 0.3 * s), lightness=(0.8, 1.0)),
                    A.Emboss(alpha=(0.1 * s, 0.3 * s), strength=(0.2, 0.7)),
                ],
                p=0.3 * s,
            ),
            A.GaussNoise(std_range=(0.01 * s, 0.04 * s), p=0.2 * s),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.04, 0.1),
                hole_width_range=(0.04, 0.1),
                fill=0,
                p=0.2 * s,
            ),
        ]
    elif modality == "oct":
        transforms = [
            A.HorizontalFlip(p=0.5),  # nasal/temporal mirror is anatomically plausible for a B-scan
            A.MultiplicativeNoise(multiplier=(1 - 0.15 * s, 1 + 0.15 * s), elementwise=True, p=0.5),
            A.Affine(
                scale=(1 - 0.08 * s, 1 + 0.08 * s),
                translate_percent=(-0.05 * s, 0.05 * s),
                rotate=(-5 * s, 5 * s),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1 * s, contrast_limit=0.1 * s, p=0.5),
        ]
    elif modality == "cxr":
        transforms = [  # no HorizontalFlip, on purpose (module doc)
            A.Affine(
                scale=(1 - 0.1 * s, 1 + 0.1 * s),
                translate_percent=(-0.05 * s, 0.05 * s),
                rotate=(-7 * s, 7 * s),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.15 * s, p=0.7),
        ]
    else:
        raise ValueError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    return A.Compose(transforms)


def augment(transform: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply `transform` reproducibly: the same seed gives the same picture in any worker."""
    transform.set_random_seed(seed)
    out = transform(image=image)["image"]
    if (
        out.shape != image.shape or out.dtype != image.dtype
    ):  # a transform must never change the contract
        raise RuntimeError(
            f"augmentation changed {image.shape}/{image.dtype} to {out.shape}/{out.dtype}"
        )
    return out
