"""Semantic segmentation over a :class:`DenseBackbone`: UperNet, Semantic FPN and DeepLabV3.

The heads keep mmsegmentation's parameter layout (``decode_head.psp_modules.0.1.conv.weight``,
``neck.lateral_convs.0.conv.bias``, ``auxiliary_head.convs.0.bn.running_var``, ...) so released
ADE20K checkpoints load with :func:`load_mmseg_checkpoint`, and they compute what mmseg's
``UPerHead``, ``FCNHead``, ``FPN`` neck and ``FPNHead`` compute (bilinear resizes with
``align_corners=False``, nearest top-down in the FPN neck, BN in place of SyncBN on one process).
Inference follows mmseg's ``EncoderDecoder``: whole-image or sliding-window (overlapping crops
averaged), logits resized to the input size. DeepLabV3 is torchvision's head (ASPP + 3x3 conv +
classifier) on the last map of a dilated backbone (``output_stride`` 16 or 8, atrous rates
6/12/18 or 12/24/36 as in the DeepLab papers).
"""
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from .adapter import DenseBackbone

__all__ = ["ConvNormAct", "UPerHead", "FCNHead", "FPNNeck", "FPNHead", "DeepLabV3Head", "Segmentor",
           "build_segmentor", "load_mmseg_checkpoint", "slide_windows"]


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvNormAct(nn.Module):
    """Conv -> BatchNorm -> ReLU with mmcv ``ConvModule``'s names (``conv``, ``bn``); the conv has
    a bias only without a norm, as ``bias='auto'`` does."""

    def __init__(self, in_channels, out_channels, kernel_size, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.act else x


class _DecodeHead(nn.Module):
    """mmseg ``BaseDecodeHead``: ``dropout`` (Dropout2d) then the 1x1 ``conv_seg`` classifier."""

    def __init__(self, channels, num_classes, dropout_ratio=0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x):
        return self.conv_seg(self.dropout(x))


class UPerHead(_DecodeHead):
    """UperNet (Xiao et al. 2018): a pyramid pooling module on the last map, an FPN over the
    others, every level upsampled to the finest and fused by a 3x3 conv."""

    def __init__(self, in_channels, num_classes, channels=512, pool_scales=(1, 2, 3, 6),
                 dropout_ratio=0.1):
        super().__init__(channels, num_classes, dropout_ratio)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvNormAct(in_channels[-1], channels, 1))
            for scale in pool_scales)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3)

    def forward(self, feats):
        top = feats[-1]
        pooled = [_resize(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(torch.cat([top] + pooled, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(_DecodeHead):
    """mmseg ``FCNHead`` as UperNet's auxiliary head: ``num_convs`` 3x3 ConvNormAct on one map."""

    def __init__(self, in_channels, num_classes, channels=256, num_convs=1, in_index=2,
                 dropout_ratio=0.1):
        super().__init__(channels, num_classes, dropout_ratio)
        self.in_index = in_index
        self.convs = nn.Sequential(*[ConvNormAct(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)])

    def forward(self, feats):
        return self.cls_seg(self.convs(feats[self.in_index]))


class FPNNeck(nn.Module):
    """mmseg / mmdet ``FPN`` without extra levels: 1x1 laterals (with bias), nearest top-down
    sums, 3x3 output convs."""

    def __init__(self, in_channels, out_channels=256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, out_channels, 1, norm=False, act=False)
                                           for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvNormAct(out_channels, out_channels, 3, norm=False,
                                                   act=False) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats):
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(_DecodeHead):
    """Semantic FPN's head (Kirillov et al. 2019, mmseg ``FPNHead``): per level, 3x3 ConvNormAct +
    2x bilinear upsampling until stride 4, then the sum."""

    def __init__(self, in_channels, num_classes, feature_strides=(4, 8, 16, 32), channels=128,
                 dropout_ratio=0.1):
        super().__init__(channels, num_classes, dropout_ratio)
        if sorted(feature_strides) != list(feature_strides):
            raise ValueError(f"feature_strides must increase, got {feature_strides}")
        self.scale_heads = nn.ModuleList()
        for c, stride in zip(in_channels, feature_strides):
            steps = max(1, (stride // feature_strides[0]).bit_length() - 1)
            layers = []
            for k in range(steps):
                layers.append(ConvNormAct(c if k == 0 else channels, channels, 3))
                if stride != feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear",
                                              align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, feats):
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + _resize(head(f), out.shape[2:])
        return self.cls_seg(out)


# DeepLabV3 (Chen et al. 2017, section 3.3): the ASPP rates for each output stride
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class DeepLabV3Head(DeepLabHead):
    """torchvision's ``DeepLabHead`` (ASPP with image pooling, 3x3 conv + BN + ReLU, 1x1
    classifier; key layout ``0.convs.*``, ``1.weight``, ...) on the last backbone map, with the
    atrous rates of the backbone's ``output_stride``."""

    def __init__(self, in_channels, num_classes, output_stride=16):
        if output_stride not in ASPP_RATES:
            raise ValueError(f"DeepLabV3 takes output_stride 16 or 8, got {output_stride}")
        super().__init__(in_channels, num_classes, atrous_rates=ASPP_RATES[output_stride])
        self.num_classes = num_classes

    def forward(self, feats):
        x = feats[-1]
        if self.training and x.shape[0] < 2:
            raise ValueError("DeepLabV3 trains with at least 2 images per process: the ASPP's "
                             "image-pooling branch batch-normalises one value per channel and "
                             "image; raise --batch-size, or call eval() for inference")
        return super().forward(x)


def slide_windows(size, crop_size, stride):
    """mmseg's sliding-window grid: ``[(y1, y2, x1, x2)]`` crops of ``crop_size`` every ``stride``,
    the last one of each axis shifted back inside the image."""
    (H, W), (ch, cw), (sh, sw) = size, crop_size, stride
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


class Segmentor(nn.Module):
    """mmseg's ``EncoderDecoder``: backbone, optional neck, decode head, optional auxiliary head.

    ``forward(images)`` returns logits at the input size (``mode='whole'``) or averaged over
    sliding crops (``mode='slide'``, ``crop_size`` / ``stride``); ``loss(images, labels)`` the
    mmseg losses (cross-entropy, ``ignore_index`` 255, auxiliary weight 0.4). Images are RGB in
    [0, 1]; ``image_mean`` / ``image_std`` (the backbone's, set by :func:`build_segmentor`)
    normalise them inside, as mmseg's data preprocessor does.
    """

    def __init__(self, backbone, decode_head, neck=None, auxiliary_head=None,
                 aux_weight=0.4, ignore_index=255, test_mode="whole", crop_size=(512, 512),
                 stride=(341, 341), image_mean=(0., 0., 0.), image_std=(1., 1., 1.)):
        super().__init__()
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), False)
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.num_classes = decode_head.num_classes
        if test_mode not in ("whole", "slide"):
            raise ValueError(f"test_mode must be 'whole' or 'slide', got {test_mode!r}")
        self.test_mode, self.crop_size, self.stride = test_mode, tuple(crop_size), tuple(stride)

    def extract_feat(self, images):
        feats = self.backbone((images - self.image_mean) / self.image_std)
        return self.neck(feats) if self.neck is not None else feats

    def encode_decode(self, images):
        return _resize(self.decode_head(self.extract_feat(images)), images.shape[2:])

    def loss(self, images, labels):
        if labels.dim() == 4:
            labels = labels.squeeze(1)
        if labels.shape[-2:] != images.shape[-2:] or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match images "
                             f"{tuple(images.shape)}: one (H, W) class map per image")
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise ValueError(f"labels hold class ids outside [0, {self.num_classes}) other than "
                             f"ignore_index {self.ignore_index}: {labels[bad].unique().tolist()[:8]}; "
                             "check num_classes and reduce_zero_label")
        feats = self.extract_feat(images)
        losses = {"loss_seg": F.cross_entropy(_resize(self.decode_head(feats), labels.shape[1:]),
                                              labels, ignore_index=self.ignore_index)}
        if self.auxiliary_head is not None:
            aux = _resize(self.auxiliary_head(feats), labels.shape[1:])
            losses["loss_aux"] = self.aux_weight * F.cross_entropy(
                aux, labels, ignore_index=self.ignore_index)
        return losses

    def slide_inference(self, images):
        B, _, H, W = images.shape
        logits = images.new_zeros(B, self.num_classes, H, W)
        count = images.new_zeros(1, 1, H, W)
        for y1, y2, x1, x2 in slide_windows((H, W), self.crop_size, self.stride):
            logits[:, :, y1:y2, x1:x2] += self.encode_decode(images[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        return logits / count

    def forward(self, images):
        if self.test_mode == "slide":
            return self.slide_inference(images)
        return self.encode_decode(images)


def build_segmentor(model_name, num_classes, head="upernet", pretrained=False,
                    auxiliary=True, channels=None, output_stride=None, **backbone_kwargs):
    """A segmentor over ``DenseBackbone(model_name, task='segmentation')``:

    * ``head='upernet'``: UperNet, 512 channels, FCN auxiliary head on stage 3;
    * ``head='semantic_fpn'``: FPN 256 + Semantic FPN head 128;
    * ``head='deeplabv3'``: DeepLabV3 on the last map of the backbone dilated to
      ``output_stride`` (default 16; timm's ``output_stride`` argument: ResNets, MobileNets and
      the other timm CNNs that support it), no auxiliary head (as the DeepLab code trains it).
    """
    backbone_kwargs.setdefault("task", "segmentation")
    if head == "deeplabv3":
        output_stride = output_stride or 16
        backbone_kwargs["output_stride"] = output_stride
        # dilated CNNs take any size; padding would change the maps near the borders, which the
        # DeepLab code (torchvision's, VainF's) does not do
        backbone_kwargs.setdefault("size_divisor", 1)
    elif output_stride is not None:
        raise ValueError(f"output_stride is a DeepLabV3 setting; head {head!r} takes the "
                         "backbone's strides as they are")
    try:
        backbone = DenseBackbone(model_name, pretrained=pretrained, **backbone_kwargs)
    except TypeError as e:
        if "output_stride" not in str(e):
            raise
        raise ValueError(f"{model_name} cannot be dilated (no output_stride argument), so it "
                         "cannot be a DeepLabV3 backbone; use a CNN that takes output_stride "
                         "(timm ResNets, MobileNets, the ELA / ULSAM hosts) or head='upernet'") from e
    in_channels = backbone.channels
    cfg = timm.get_pretrained_cfg(model_name.split(".")[0])
    norm = dict(image_mean=tuple(cfg.mean), image_std=tuple(cfg.std)) if cfg is not None else {}
    if head == "upernet":
        decode = UPerHead(in_channels, num_classes, channels=channels or 512)
        aux = FCNHead(in_channels[2], num_classes, in_index=2) if auxiliary else None
        return Segmentor(backbone, decode, auxiliary_head=aux, **norm)
    if head == "semantic_fpn":
        neck = FPNNeck(in_channels, 256)
        decode = FPNHead([256] * len(in_channels), num_classes,
                         feature_strides=tuple(backbone.strides), channels=channels or 128)
        return Segmentor(backbone, decode, neck=neck, **norm)
    if head == "deeplabv3":
        if backbone.strides[-1] != output_stride:
            raise ValueError(f"{model_name} ignored output_stride={output_stride}: its last map "
                             f"has stride {backbone.strides[-1]}")
        return Segmentor(backbone, DeepLabV3Head(in_channels[-1], num_classes, output_stride),
                         **norm)
    raise ValueError(f"head must be 'upernet', 'semantic_fpn' or 'deeplabv3', got {head!r}")


def load_mmseg_checkpoint(segmentor, checkpoint, strict=True):
    """Load an mmseg checkpoint (``{'state_dict': ...}`` with ``backbone.`` / ``neck.`` /
    ``decode_head.`` / ``auxiliary_head.`` keys) into ``segmentor``: head keys as they are, the
    backbone's through its family's ``checkpoint_filter_fn`` (official dense layouts)."""
    import backbones
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError("not an mmseg checkpoint: expected a dict with a 'state_dict' entry")
    heads = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    body = segmentor.backbone.body
    model = getattr(body, "model", body)
    name = segmentor.backbone.model_name.split(".")[0]
    if name in backbones.list_zoo_models():
        backbone_sd = backbones.get_family(name).checkpoint_filter_fn(
            {k: v for k, v in state.items() if k.startswith("backbone.")}, model)
    else:
        backbone_sd = {k[len("backbone."):]: v for k, v in state.items()
                       if k.startswith("backbone.")}
    own = model.state_dict()
    backbone_sd = {k: v for k, v in backbone_sd.items() if k in own}
    missing = [k for k in own if k not in backbone_sd]
    if strict and missing:
        raise KeyError(f"the checkpoint's backbone lacks {len(missing)} keys of "
                       f"{segmentor.backbone.model_name}, e.g. {missing[:5]}")
    model.load_state_dict(backbone_sd, strict=strict)
    head_modules = {k: v for k, v in segmentor.state_dict().items() if not k.startswith("backbone.")}
    unknown = sorted(set(heads) - set(head_modules))
    missing_heads = sorted(set(head_modules) - set(heads))
    if strict and (unknown or missing_heads):
        raise KeyError(f"head keys differ from the checkpoint: missing {missing_heads[:5]}, "
                       f"unexpected {unknown[:5]} (num_classes or head type mismatch?)")
    segmentor.load_state_dict({**{f"backbone.body.{'model.' if model is not body else ''}{k}": v
                                  for k, v in backbone_sd.items()},
                               **{k: v for k, v in heads.items() if k in head_modules}},
                              strict=False)
    return segmentor
