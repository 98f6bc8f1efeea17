"""backbones.dense: the multi-scale adapter, the segmentation heads (mmseg layout and semantics),
sliding-window inference and the mmseg-protocol mIoU."""
import math

import numpy as np
import pytest
import torch
import timm
import torch.nn.functional as F

import backbones
from backbones.dense import (
    DenseBackbone, FPNHead, FPNNeck, IoUMetric, Segmentor, UPerHead, build_segmentor,
    intersect_and_union, load_mmseg_checkpoint, slide_windows)
from backbones.dense.adapter import dense_backbone_kwargs

SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))  # cswin, fast on CPU


def _cswin_backbone(**kwargs):
    torch.manual_seed(0)
    return DenseBackbone("cswin_tiny_224", **dict(SMALL, **kwargs))


# ----------------------------------------------------------------------------- adapter

@pytest.mark.parametrize("name", backbones.list_zoo_models())
def test_every_zoo_model_is_a_dense_backbone_at_an_odd_non_square_size(name):
    """One NCHW map per stage, ceil(size / stride) each, channels as feature_info declares; a
    model that takes one input size only says it cannot be a dense backbone."""
    torch.manual_seed(0)
    if not backbones.get_family(name).any_input_size:
        with pytest.raises(ValueError, match="cannot be a detection / segmentation backbone"):
            DenseBackbone(name, task="segmentation")
        return
    backbone = DenseBackbone(name, task="segmentation").eval()
    size = (77, 101)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    assert len(feats) == len(backbone.channels) == len(backbone.strides)
    for f, c, s in zip(feats, backbone.channels, backbone.strides):
        assert f.shape[:2] == (1, c), (f.shape, c)
        for n, axis in zip(f.shape[2:], size):  # families floor or ceil (LITv2: per stage)
            assert n in (axis // s, math.ceil(axis / s)), (f.shape, s)
        assert torch.isfinite(f).all()


def test_task_kwargs_add_the_official_dense_norms():
    assert dense_backbone_kwargs("cswin_tiny_224", "segmentation") == dict(feature_norms=True)
    assert dense_backbone_kwargs("biformer_tiny_224", "detection") == dict(feature_norms=True,
                                                                          n_win=16)
    assert dense_backbone_kwargs("resnet18", "detection") == {}
    with pytest.raises(ValueError, match="task must be one of"):
        dense_backbone_kwargs("cswin_tiny_224", "panoptic")
    plain = _cswin_backbone()
    normed = _cswin_backbone(task="segmentation")
    assert not any("feature_norms" in k for k in plain.state_dict())
    assert sum("feature_norms" in k for k in normed.state_dict()) == 8  # 4 LayerNorms


def test_timm_model_is_padded_to_its_stride_and_cropped_back():
    backbone = DenseBackbone("resnet18").eval()
    assert backbone.size_divisor == 32 and backbone.strides == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        feats = backbone(x)
        padded = backbone.body(F.pad(x, (0, 6, 0, 26)))
    for f, p, s in zip(feats, padded, backbone.strides):
        assert f.shape[2:] == (math.ceil(70 / s), math.ceil(90 / s))
        torch.testing.assert_close(f, p[..., :f.shape[2], :f.shape[3]])


def test_frozen_stages_and_norm_eval():
    backbone = DenseBackbone("resnet18", frozen_stages=1, norm_eval=True)
    backbone.train()
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert any(n.startswith("body.conv1") for n in frozen)  # stem
    assert any(n.startswith("body.layer1") for n in frozen)  # stage 1 (feature index 1)
    assert not any(n.startswith("body.layer2") for n in frozen)
    assert any(n.startswith("body.layer4") for n in trainable)
    assert all(not m.training for m in backbone.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval
    with pytest.raises(ValueError, match="frozen_stages=9"):
        DenseBackbone("resnet18", frozen_stages=9)


def test_adapter_rejects_a_non_image_batch():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _cswin_backbone()(torch.randn(3, 32, 32))


# ----------------------------------------------------------------------------- heads

def test_upernet_keys_follow_mmseg():
    seg = build_segmentor("cswin_tiny_224", num_classes=150, **SMALL)
    keys = set(seg.state_dict())
    for key in ["decode_head.psp_modules.0.1.conv.weight", "decode_head.psp_modules.3.1.bn.running_var",
                "decode_head.bottleneck.conv.weight", "decode_head.lateral_convs.2.bn.weight",
                "decode_head.fpn_convs.0.conv.weight", "decode_head.fpn_bottleneck.conv.weight",
                "decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"]:
        assert key in keys, key
    assert "decode_head.bottleneck.conv.bias" not in keys  # ConvModule: no bias before a norm
    assert seg.decode_head.conv_seg.weight.shape == (150, 512, 1, 1)
    assert seg.auxiliary_head.convs[0].conv.weight.shape == (256, 64, 3, 3)  # stage 3 of SMALL


def test_upernet_param_count_matches_the_published_size():
    """~31.5 M for Swin-T-like channels [96, 192, 384, 768] (ecosystem spec, mmseg's UPerHead +
    FCN auxiliary head at 150 classes)."""
    decode = UPerHead([96, 192, 384, 768], 150)
    n = sum(p.numel() for p in decode.parameters())
    assert 31.0e6 < n < 32.0e6, n


def test_semantic_fpn_layout_and_size():
    seg = build_segmentor("cswin_tiny_224", num_classes=150, head="semantic_fpn", **SMALL)
    keys = set(seg.state_dict())
    for key in ["neck.lateral_convs.0.conv.weight", "neck.lateral_convs.0.conv.bias",
                "neck.fpn_convs.3.conv.bias", "decode_head.scale_heads.0.0.conv.weight",
                "decode_head.scale_heads.3.4.bn.weight", "decode_head.conv_seg.weight"]:
        assert key in keys, key
    assert "decode_head.scale_heads.3.1.conv.weight" not in keys  # index 1 is the Upsample
    neck_and_head = torch.nn.ModuleList([FPNNeck([96, 192, 384, 768], 256),
                                         FPNHead([256] * 4, 150)])
    n = sum(p.numel() for p in neck_and_head.parameters())
    assert 4.3e6 < n < 4.45e6, n  # the ecosystem spec: ~4.3-4.4 M on Swin-T channels


def test_upernet_forward_matches_a_step_by_step_computation():
    torch.manual_seed(0)
    head = UPerHead([8, 16, 32], num_classes=5, channels=12, pool_scales=(1, 2)).eval()
    feats = [torch.randn(2, c, 32 // 2 ** i, 24 // 2 ** i) for i, c in enumerate([8, 16, 32])]
    with torch.no_grad():
        out = head(feats)

        def up(t, size):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        top = feats[2]
        psp = torch.cat([top] + [up(m(top), top.shape[2:]) for m in head.psp_modules], 1)
        lat = [head.lateral_convs[0](feats[0]), head.lateral_convs[1](feats[1]), head.bottleneck(psp)]
        lat[1] = lat[1] + up(lat[2], lat[1].shape[2:])
        lat[0] = lat[0] + up(lat[1], lat[0].shape[2:])
        fused = torch.cat([head.fpn_convs[0](lat[0]), up(head.fpn_convs[1](lat[1]), (32, 24)),
                           up(lat[2], (32, 24))], 1)
        want = head.conv_seg(head.fpn_bottleneck(fused))
    assert out.shape == (2, 5, 32, 24)
    torch.testing.assert_close(out, want)


# ----------------------------------------------------------------------------- segmentor

def test_deeplabv3_equals_torchvisions_deeplabv3_with_the_same_weights():
    """head='deeplabv3' at output stride 8 is torchvision's deeplabv3_resnet50 (dilated layer3 /
    layer4, ASPP 12/24/36): its weights load key for key and the logits agree exactly, at an odd
    non-square size (no padding: dilated CNNs take any size)."""
    import torchvision
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()
    ours = build_segmentor("resnet50", 21, head="deeplabv3", output_stride=8).eval()
    renamed = {("backbone.body." + k[len("backbone."):]) if k.startswith("backbone.")
               else "decode_head." + k[len("classifier."):]: v
               for k, v in reference.state_dict().items()}
    own = {k for k in ours.state_dict() if not k.startswith("image_")}
    assert own == set(renamed)
    ours.load_state_dict(renamed, strict=False)
    images = torch.rand(1, 3, 97, 129)
    normalised = (images - ours.image_mean) / ours.image_std
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(normalised)["out"], rtol=0, atol=0)


def test_deeplabv3_output_stride_and_its_errors():
    seg = build_segmentor("ela_resnet18_b_224", 21, head="deeplabv3")  # 16 by default
    assert seg.backbone.strides[-1] == 16
    assert [seg.decode_head[0].convs[i][0].dilation for i in (1, 2, 3)] == [(6, 6), (12, 12),
                                                                           (18, 18)]
    assert seg(torch.rand(2, 3, 65, 81)).shape == (2, 21, 65, 81)
    with pytest.raises(ValueError, match="at least 2 images per process"):
        seg(torch.rand(1, 3, 65, 81))
    assert seg.eval()(torch.rand(1, 3, 65, 81)).shape == (1, 21, 65, 81)
    with pytest.raises(ValueError, match="cannot be dilated"):
        build_segmentor("cswin_tiny_224", 21, head="deeplabv3", **SMALL)
    with pytest.raises(ValueError, match="DeepLabV3 setting"):
        build_segmentor("resnet18", 21, head="upernet", output_stride=16)
    with pytest.raises(ValueError, match="output_stride 16 or 8"):
        build_segmentor("resnet18", 21, head="deeplabv3", output_stride=32)


def test_slide_windows_follow_mmseg():
    assert slide_windows((512, 683), (512, 512), (341, 341)) == [(0, 512, 0, 512),
                                                                 (0, 512, 171, 683)]
    wins = slide_windows((600, 900), (512, 512), (341, 341))
    assert len(wins) == 2 * 3 and wins[-1] == (88, 600, 388, 900)
    assert slide_windows((100, 80), (512, 512), (341, 341)) == [(0, 100, 0, 80)]  # one crop


def test_slide_inference_averages_overlapping_crops():
    seg = build_segmentor("cswin_tiny_224", num_classes=4, **SMALL).eval()
    seg.test_mode, seg.crop_size, seg.stride = "slide", (64, 64), (48, 48)
    x = torch.randn(1, 3, 64, 112)
    with torch.no_grad():
        out = seg(x)
        a = seg.encode_decode(x[..., 0:64])
        b = seg.encode_decode(x[..., 48:112])
    want = torch.zeros(1, 4, 64, 112)
    want[..., 0:64] += a
    want[..., 48:112] += b
    want[..., 48:64] /= 2
    torch.testing.assert_close(out, want)


def test_loss_trains_and_rejects_bad_labels():
    seg = build_segmentor("cswin_tiny_224", num_classes=3, **SMALL)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    labels[:, :4] = 255
    losses = seg.loss(x, labels)
    assert set(losses) == {"loss_seg", "loss_aux"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert seg.decode_head.conv_seg.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="outside"):
        seg.loss(x, torch.full((2, 64, 64), 7))
    with pytest.raises(ValueError, match="do not match"):
        seg.loss(x, labels[:, :32])


def test_mmseg_checkpoint_roundtrip_through_the_family_filter():
    """An mmseg file's backbone keys are official dense-layout keys (backbone.norm1..4 for CSWin);
    the loader maps them through cswin.checkpoint_filter_fn and keeps head keys as they are."""
    seg = build_segmentor("cswin_tiny_224", num_classes=6, **SMALL)
    body = seg.backbone.body.model
    official = {}
    for k, v in body.state_dict().items():  # zoo -> official dense names (what the filter undoes)
        if k.startswith("feature_norms."):
            i = int(k.split(".")[1])
            k = f"norm{i + 1}." + k.split(".", 2)[2]
        official[k] = v.clone() + 0.5 if v.is_floating_point() else v.clone()
    heads = {k: v.clone() + 0.25 for k, v in seg.state_dict().items()
             if not k.startswith("backbone.") and v.is_floating_point()}
    fresh = build_segmentor("cswin_tiny_224", num_classes=6, **SMALL)
    zoo_keys = set(body.state_dict())
    official_zoo = backbones.cswin.checkpoint_filter_fn(
        {f"backbone.{k}": v for k, v in official.items()}, fresh.backbone.body.model)
    if set(official_zoo) != zoo_keys:
        pytest.skip("the cswin filter maps other official names; covered by its own tests")
    load_mmseg_checkpoint(fresh, {"state_dict": {**{f"backbone.{k}": v for k, v in official.items()},
                                                 **heads}}, strict=False)
    got = fresh.state_dict()
    assert torch.equal(got["decode_head.conv_seg.weight"], heads["decode_head.conv_seg.weight"])
    assert torch.equal(got["backbone.body.model.feature_norms.0.weight"], official["norm1.weight"])
    with pytest.raises(ValueError, match="not an mmseg checkpoint"):
        load_mmseg_checkpoint(fresh, [1, 2])


# ----------------------------------------------------------------------------- metrics

def test_intersect_and_union_by_hand():
    pred = torch.tensor([[0, 0, 1], [1, 2, 2]])
    label = torch.tensor([[0, 1, 1], [1, 2, 255]])
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 3)
    assert inter.tolist() == [1, 2, 1]
    assert area_pred.tolist() == [2, 2, 1]  # the pixel under label 255 is dropped
    assert area_label.tolist() == [1, 3, 1]
    assert union.tolist() == [2, 3, 1]


def test_reduce_zero_label_and_dataset_level_nan_mean():
    """ADE20K: label 0 is 'other' (ignored), classes shift down by one; IoU sums counts over the
    data set before dividing, and a class absent everywhere is NaN, left out of the mean."""
    metric = IoUMetric(num_classes=3, reduce_zero_label=True)
    label1 = torch.tensor([[0, 1, 1, 2]])  # -> [255, 0, 0, 1]
    pred1 = torch.tensor([[2, 0, 1, 1]])
    label2 = torch.tensor([[2, 2, 1, 0]])  # -> [1, 1, 0, 255]
    pred2 = torch.tensor([[1, 0, 0, 0]])
    metric.update(pred1[None], label1[None])
    metric.update(pred2[None], label2[None])
    res = metric.compute()
    # class 0: inter 1+1=2, pred 1+2=3, label 2+1=3 -> union 4 -> IoU 50
    # class 1: inter 1+1=2, pred 2+1=3, label 1+2=3 -> union 4 -> IoU 50
    # class 2: never labelled or predicted (after shifting) -> NaN
    assert res["IoU"]["0"] == pytest.approx(50.0)
    assert res["IoU"]["1"] == pytest.approx(50.0)
    assert np.isnan(res["IoU"]["2"])
    assert res["mIoU"] == pytest.approx(50.0)  # NaN class 2 left out, not counted as 0
    assert res["aAcc"] == pytest.approx(100 * 4 / 6)
    assert res["mAcc"] == pytest.approx((100 * 2 / 3 + 100 * 2 / 3) / 2)


def test_metric_rejects_labels_beyond_num_classes():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        intersect_and_union(torch.zeros(2, 2), torch.full((2, 2), 5), 3)
    with pytest.raises(ValueError, match="differ"):
        intersect_and_union(torch.zeros(2, 2), torch.zeros(2, 3), 3)


# ----------------------------------------------------------------------------- detection

def _detection_batch(with_masks):
    images = [torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(0)),
              torch.rand(3, 100, 128, generator=torch.Generator().manual_seed(1))]
    targets = []
    for image in images:
        target = dict(boxes=torch.tensor([[10., 20., 60., 80.], [30., 10., 100., 90.]]),
                      labels=torch.tensor([1, 3]))
        if with_masks:
            masks = torch.zeros(2, *image.shape[1:], dtype=torch.uint8)
            masks[0, 20:80, 10:60] = 1
            masks[1, 10:90, 30:100] = 1
            target["masks"] = masks
        targets.append(target)
    return images, targets


LIGHT_RCNN = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                  box_batch_size_per_image=32, rpn_batch_size_per_image=32)


@pytest.mark.parametrize("kind", ["mask_rcnn", "faster_rcnn", "retinanet", "fcos"])
def test_detector_trains_a_step_and_predicts(kind):
    from backbones.dense import build_detector
    torch.manual_seed(0)
    detector = build_detector(kind, "cswin_tiny_224", num_classes=3, min_size=128, max_size=160,
                              detector_kwargs=LIGHT_RCNN if "rcnn" in kind else None, **SMALL)
    assert detector.transform.image_mean == list(
        timm.get_pretrained_cfg("cswin_tiny_224").mean)  # the backbone's normalisation
    images, targets = _detection_batch(kind == "mask_rcnn")
    detector.train()
    losses = detector(images, targets)
    expected = {"mask_rcnn": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                              "loss_rpn_box_reg"},
                "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness",
                                "loss_rpn_box_reg"},
                "retinanet": {"classification", "bbox_regression"},
                "fcos": {"classification", "bbox_regression", "bbox_ctrness"}}[kind]
    assert set(losses) == expected
    sum(losses.values()).backward()
    grads = [p.grad for p in detector.backbone.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # reaches the zoo backbone
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    assert (kind == "mask_rcnn") == ("masks" in out[0])


def test_cascade_mask_rcnn_trains_a_step_and_predicts():
    from backbones.dense import build_detector
    torch.manual_seed(0)
    rpn = {k: v for k, v in LIGHT_RCNN.items() if k.startswith("rpn")}
    detector = build_detector("cascade_mask_rcnn", "cswin_tiny_224", num_classes=3, min_size=128,
                              max_size=160, detector_kwargs=rpn,
                              cascade_kwargs=dict(batch_size_per_image=32), **SMALL)
    images, targets = _detection_batch(True)
    losses = detector.train()(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} | {
        f"loss_{name}_s{i}" for name in ("classifier", "box_reg", "mask") for i in range(3)}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for stage in range(3):  # every stage's heads learn
        assert detector.roi_heads.box_predictors[stage].cls_score.weight.grad.abs().sum() > 0
        assert detector.roi_heads.mask_predictors[stage].mask_fcn_logits.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in detector.backbone.backbone.parameters())
    with torch.no_grad():
        out = detector.eval()(images)
    assert len(out) == 2 and {"boxes", "labels", "scores", "masks"} <= set(out[0])
    assert out[0]["masks"].shape[-2:] == images[0].shape[-2:]  # pasted into the image


def _constant_cascade(stage_cls_bias, stage_dx_bias, with_masks=False):
    """Cascade heads whose predictors ignore their input: per stage fixed class logits and a
    fixed x-shift delta for class 1."""
    from backbones.dense.cascade import CascadeRoIHeads
    heads = CascadeRoIHeads(num_classes=3, out_channels=8, with_masks=with_masks,
                            batch_size_per_image=10 ** 4).eval()
    for pred, cls_bias, dx in zip(heads.box_predictors, stage_cls_bias, stage_dx_bias):
        pred.cls_score.weight.data.zero_()
        pred.bbox_pred.weight.data.zero_()
        pred.cls_score.bias.data = torch.tensor(cls_bias)
        pred.bbox_pred.bias.data.zero_()
        pred.bbox_pred.bias.data[4] = dx  # class 1, dx
    features = {str(i): torch.randn(1, 8, 32 >> i, 32 >> i) for i in range(4)}
    return heads, features


def test_cascade_inference_refines_stage_by_stage_and_averages_the_logits():
    # stage 0 predicts class 1 and shifts it by 1 / 10 of its width (stds 0.1); stage 1 and 2 keep
    # it; the final scores are softmax(mean of the stage logits), not the mean of softmaxes
    heads, features = _constant_cascade([[0., 2., 0.], [0., 4., 0.], [0., 6., 0.]], [1., 0., 0.])
    with torch.no_grad():
        (det,), _ = heads(features, [torch.tensor([[10., 10., 50., 50.]])], [(128, 128)])
    assert det["labels"].tolist() == [1]  # class 2 falls under the 0.05 score threshold
    torch.testing.assert_close(det["boxes"], torch.tensor([[14., 10., 54., 50.]]))
    torch.testing.assert_close(det["scores"], torch.tensor([math.exp(4) / (math.exp(4) + 2)]))
    # the last stage's regression is applied with its own stds (0.033 -> 1 / 30.3 of the width)
    heads, features = _constant_cascade([[0., 2., 0.]] * 3, [0., 0., 1.])
    with torch.no_grad():
        (det,), _ = heads(features, [torch.tensor([[10., 10., 50., 50.]])], [(128, 128)])
    torch.testing.assert_close(det["boxes"][0, 0], torch.tensor(10. + 40 * 0.033), rtol=0, atol=1e-4)


def test_cascade_stages_raise_the_iou_threshold_and_drop_gt_rois_when_refining():
    heads, _ = _constant_cascade([[0., 0., 0.]] * 3, [1., 0., 0.])
    gt = torch.tensor([[0., 0., 100., 100.]])
    rois = torch.tensor([[0., 0., 100., 57.], [0., 0., 100., 66.], [0., 0., 100., 30.]])  # IoU .57 .66 .30
    targets = [dict(boxes=gt, labels=torch.tensor([2]))]
    for stage, expected in ((0, [2, 2, 0, 2]), (1, [0, 2, 0, 2]), (2, [0, 0, 0, 2])):
        (boxes, labels, matched, is_gt), = heads._sample(stage, [rois], targets)
        got = {tuple(b.tolist()): int(lab) for b, lab in zip(boxes, labels)}
        assert [got[tuple(b.tolist())] for b in torch.cat([rois, gt])] == expected, stage
        assert is_gt.tolist() == [b.tolist() == gt[0].tolist() for b in boxes]
    samples = heads._sample(0, [rois], targets)
    n = len(samples[0][0])
    logits = torch.zeros(n, 3)
    deltas = torch.zeros(n, 12)
    deltas[:, 8] = 1.0  # class 2 (the target class of the positives), dx, std 0.1 -> +0.1 w
    refined, = heads._refine(0, samples, logits, deltas, [(128, 128)])
    assert len(refined) == n - 1  # the ground-truth RoI is gone
    positives = samples[0][1][~samples[0][3]] > 0
    torch.testing.assert_close(refined[positives][:, 0], torch.full((int(positives.sum()),), 10.))


def test_detector_fpn_levels_follow_mmdet():
    from backbones.dense import build_detector
    rcnn = build_detector("mask_rcnn", "cswin_tiny_224", num_classes=80, **SMALL)
    retina = build_detector("retinanet", "cswin_tiny_224", num_classes=80, **SMALL)
    assert rcnn.backbone.in_levels == (0, 1, 2, 3)  # all four stages + max-pooled P6
    assert retina.backbone.in_levels == (1, 2, 3)  # start_level=1, P6/P7 on the input
    assert retina.backbone.fpn.extra_blocks.p6.in_channels == 128  # SMALL's last stage
    assert rcnn.roi_heads.box_predictor.cls_score.out_features == 81  # + background
    assert (rcnn.transform.min_size, rcnn.transform.max_size) == ((800,), 1333)
    with pytest.raises(ValueError, match="detector must be one of"):
        build_detector("yolo", "cswin_tiny_224", num_classes=80)


def _neck_params(module):
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith("backbone."))


@pytest.mark.parametrize("kind,strides,params", [
    # ysj9909/SHViT downstream configs: EfficientViTFPN(in_channels=[224, 336, 448], 256, num_outs=5)
    # Mask R-CNN: num_extra_trans_convs=2 -> 1x1 laterals, 3x3 outputs, 2 x (2x2 transposed + 3x3)
    ("mask_rcnn", [4, 8, 16, 32, 64],
     (224 + 336 + 448) * 256 + 3 * 256 + 5 * (9 * 256 * 256 + 256) + 2 * (4 * 256 * 256 + 256)),
    # RetinaNet: num_extra_trans_convs=1, add_extra_convs='on_input' (3x3/2 on the 448-ch map)
    ("retinanet", [8, 16, 32, 64, 128],
     (224 + 336 + 448) * 256 + 3 * 256 + 4 * (9 * 256 * 256 + 256) + (4 * 256 * 256 + 256)
     + (9 * 448 * 256 + 256)),
])
def test_shvit_detectors_get_the_official_upsampling_fpn(kind, strides, params):
    """SHViT's maps are strides 16 / 32 / 64 (a plain FPN "learns nothing", ysj9909/SHViT#2):
    the neck upsamples to the detector's finest levels as the official EfficientViTFPN does."""
    from backbones.dense import UpsampledFPN, build_detector
    detector = build_detector(kind, "shvit_s4_256", num_classes=80, min_size=256, max_size=320)
    assert isinstance(detector.backbone, UpsampledFPN)
    assert _neck_params(detector.backbone) == params
    images, _ = detector.eval().transform([torch.rand(3, 250, 310)])
    with torch.no_grad():
        feats = detector.backbone(images.tensors)
    height = images.tensors.shape[-2]  # 256: every stride divides it
    assert [height // f.shape[-2] for f in feats.values()] == strides
    assert all(f.shape[1] == 256 for f in feats.values())


@pytest.mark.parametrize("kind", ["mask_rcnn", "retinanet"])
def test_shvit_detector_trains_a_step_and_predicts(kind):
    from backbones.dense import build_detector
    torch.manual_seed(0)
    detector = build_detector(kind, "shvit_s1_224", num_classes=3, min_size=128, max_size=160,
                              detector_kwargs=LIGHT_RCNN if kind == "mask_rcnn" else None)
    images, targets = _detection_batch(kind == "mask_rcnn")
    losses = detector.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert detector.backbone.up_convs[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in detector.backbone.backbone.parameters())
    with torch.no_grad():
        out = detector.eval()(images)
    assert len(out) == 2 and (kind == "mask_rcnn") == ("masks" in out[0])


def test_upsampled_fpn_follows_efficientvit_fpn_step_by_step():
    from backbones.dense import UpsampledFPN

    class Maps(torch.nn.Module):  # a stand-in backbone: three maps at strides 16, 32, 64
        channels, strides = [6, 8, 10], [16, 32, 64]

        def forward(self, x):
            g = torch.Generator().manual_seed(0)
            return [torch.randn(1, c, 8 // 2 ** i, 10 // 2 ** i, generator=g)
                    for i, c in enumerate(self.channels)]

    torch.manual_seed(0)
    for extra, num_extra in (("maxpool", 1), ("conv_on_input", 2)):
        neck = UpsampledFPN(Maps(), (0, 1, 2), out_channels=4, num_up=2, num_extra=num_extra,
                            extra=extra)
        for p in neck.parameters():
            p.data.normal_()  # mmdet inits biases to 0: make them count
        out = list(neck(None).values())
        c = Maps()(None)
        lat = [conv(x) for conv, x in zip(neck.lateral_convs, c)]
        lat[1] = lat[1] + F.interpolate(lat[2], size=lat[1].shape[-2:])
        lat[0] = lat[0] + F.interpolate(lat[1], size=lat[0].shape[-2:])
        up8 = neck.up_convs[0](lat[0])      # stride 8, from the summed finest lateral
        up4 = neck.up_convs[1](up8)         # stride 4
        expected = [neck.up_fpn_convs[1](up4), neck.up_fpn_convs[0](up8)]
        expected += [conv(x) for conv, x in zip(neck.fpn_convs, lat)]
        if extra == "maxpool":
            expected.append(expected[-1][:, :, ::2, ::2])
        else:
            p6 = neck.extra_convs[0](c[-1])
            expected += [p6, neck.extra_convs[1](p6)]
        assert len(out) == len(expected) == 2 + 3 + num_extra
        for a, b in zip(out, expected):
            torch.testing.assert_close(a, b)


def test_detector_levels_skip_a_stride_2_stem_tap():
    from backbones.dense import build_detector
    rcnn = build_detector("mask_rcnn", "halonet26t_256", num_classes=3)
    retina = build_detector("retinanet", "halonet26t_256", num_classes=3)
    assert rcnn.backbone.backbone.strides == [2, 4, 8, 16, 32]
    assert rcnn.backbone.in_levels == (1, 2, 3, 4) and retina.backbone.in_levels == (2, 3, 4)


# ----------------------------------------------------------------------------- mmdet / mmseg

def test_zoo_backbone_registers_in_an_openmmlab_registry():
    from mmengine.registry import Registry
    from backbones.dense.mm import ZooBackbone, register_mm_backbones
    registry = Registry("test models")
    assert register_mm_backbones([registry]) == [registry]
    backbone = registry.build(dict(type="ZooBackbone", model_name="cswin_tiny_224",
                                   task="segmentation", frozen_stages=0, **SMALL))
    assert isinstance(backbone, ZooBackbone) and backbone.out_channels == [16, 32, 64, 128]
    backbone.init_weights()
    out = backbone.train()(torch.randn(1, 3, 64, 64))
    assert isinstance(out, tuple) and [o.shape[1] for o in out] == [16, 32, 64, 128]
    model = backbone.body.body.model
    assert not model.stem.training and not model.stages[0].training  # frozen: eval mode
    assert model.stages[1].training
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("stages") else "")
              for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "stages.0"}
    register_mm_backbones([registry])  # idempotent


def test_register_without_openmmlab_packages_is_a_no_op():
    import importlib.util
    from backbones.dense.mm import register_mm_backbones
    if importlib.util.find_spec("mmdet") or importlib.util.find_spec("mmseg"):
        pytest.skip("mmdet / mmseg installed here")
    assert register_mm_backbones() == []
