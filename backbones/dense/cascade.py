"""Cascade Mask R-CNN RoI heads on torchvision (Cai & Vasconcelos, "Cascade R-CNN", CVPR 2018),
set up as mmdet's ``CascadeRoIHead`` in the Swin / CSWin 3x recipe
(``cascade_mask_rcnn_swin_*_mstrain_480-800_giou_4conv1f_adamw_3x_coco``):

* three stages with IoU thresholds 0.5 / 0.6 / 0.7, loss weights 1 / 0.5 / 0.25, box-delta stds
  (0.1, 0.1, 0.2, 0.2) / (0.05, 0.05, 0.1, 0.1) / (0.033, 0.033, 0.067, 0.067);
* per stage a "4conv1fc" box head (four 3x3 convs with BatchNorm, one 1024 fc), class-specific
  regression trained with GIoU loss (weight 10) on the decoded boxes, and a 4-conv FCN mask head;
* training: each stage matches and samples (512 RoIs, 25 % positive, ground truth added) from the
  previous stage's sampled RoIs regressed by that stage (ground-truth RoIs dropped), detached;
* inference: RoIs regressed stage by stage with each RoI's highest-scoring class, the class
  logits averaged over the stages, boxes from the last stage, masks the mean of the three mask
  heads' probabilities.

Plugs into a torchvision ``MaskRCNN`` in place of its ``roi_heads`` (``build_detector`` does it
for ``'cascade_mask_rcnn'``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, box_iou, boxes as box_ops, generalized_box_iou_loss

__all__ = ["CascadeRoIHeads"]

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class CascadeRoIHeads(nn.Module):
    """Three-stage cascade box + mask heads over FPN features (``'0'`` ... ``'3'``: strides 4-32).

    Args:
        num_classes: classes including background (index 0, torchvision's convention).
        out_channels: FPN width.
        stage_ious, stage_loss_weights, stage_stds: per stage, as mmdet's cascade config.
        batch_size_per_image, positive_fraction: RoI sampling per stage.
        giou_loss_weight: box loss weight (GIoU on decoded boxes).
        score_thresh, nms_thresh, detections_per_img: inference.
        with_masks: add the three mask heads.
        norm_layer: normalisation of the box heads' convs (mmdet: SyncBN; BatchNorm2d here, turned
            into SyncBatchNorm by the multi-GPU tools).
    """

    def __init__(self, num_classes, out_channels=256, stage_ious=STAGE_IOUS,
                 stage_loss_weights=STAGE_LOSS_WEIGHTS, stage_stds=STAGE_STDS,
                 batch_size_per_image=512, positive_fraction=0.25, giou_loss_weight=10.0,
                 score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, with_masks=True,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        if not len(stage_ious) == len(stage_loss_weights) == len(stage_stds):
            raise ValueError("stage_ious, stage_loss_weights and stage_stds need one entry per stage")
        self.num_classes = num_classes
        self.stage_ious = tuple(stage_ious)
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.box_coders = [det_utils.BoxCoder(tuple(1.0 / s for s in stds)) for stds in stage_stds]
        self.matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False)
                         for iou in stage_ious]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image,
                                                                 positive_fraction)
        self.giou_loss_weight = giou_loss_weight
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        levels = ["0", "1", "2", "3"]
        self.box_roi_pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
        self.box_heads = nn.ModuleList(
            FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=norm_layer)
            for _ in stage_ious)
        self.box_predictors = nn.ModuleList(FastRCNNPredictor(1024, num_classes)
                                            for _ in stage_ious)
        self.with_masks = with_masks
        if with_masks:
            self.mask_roi_pool = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
            self.mask_heads = nn.ModuleList(MaskRCNNHeads(out_channels, [256] * 4, 1)
                                            for _ in stage_ious)
            self.mask_predictors = nn.ModuleList(MaskRCNNPredictor(256, 256, num_classes)
                                                 for _ in stage_ious)

    # ------------------------------------------------------------------ training

    def _sample(self, stage, proposals, targets):
        """Match (ground truth added as proposals) and sample: per image the sampled RoIs, their
        labels, matched ground-truth index and whether the RoI is a ground-truth box."""
        out = []
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"]
            is_gt = torch.cat([torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device),
                               torch.ones(len(gt), dtype=torch.bool, device=boxes.device)])
            boxes = torch.cat([boxes, gt])
            if len(gt):
                idx = self.matchers[stage](box_iou(gt, boxes))
                labels = target["labels"][idx.clamp(min=0)].to(torch.int64)
                labels[idx < 0] = 0
                matched = idx.clamp(min=0)
            else:  # no objects: everything is background
                labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                matched = torch.zeros_like(labels)
            out.append([boxes, labels, matched, is_gt])
        pos, neg = self.sampler([o[1] for o in out])
        for o, p, n in zip(out, pos, neg):
            keep = torch.where(p | n)[0]
            o[:] = [t[keep] for t in o]
        return out

    def _box_forward(self, stage, features, rois, image_shapes):
        x = self.box_roi_pool(features, rois, image_shapes)
        return self.box_predictors[stage](self.box_heads[stage](x))

    def _class_deltas(self, deltas, labels):
        return deltas.reshape(len(deltas), -1, 4)[torch.arange(len(deltas)), labels]

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("CascadeRoIHeads needs targets in training mode")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    def _losses(self, features, proposals, image_shapes, targets):
        losses = {}
        rois = [p.detach() for p in proposals]
        for stage, weight in enumerate(self.stage_loss_weights):
            samples = self._sample(stage, rois, targets)
            boxes = [s[0] for s in samples]
            labels = torch.cat([s[1] for s in samples])
            logits, deltas = self._box_forward(stage, features, boxes, image_shapes)
            loss_cls = F.cross_entropy(logits, labels)
            pos = labels > 0
            gt_boxes = torch.cat([t["boxes"][s[2]] for t, s in zip(targets, samples)])
            if pos.any():
                pred = self.box_coders[stage].decode_single(
                    self._class_deltas(deltas, labels)[pos], torch.cat(boxes)[pos])
                loss_box = generalized_box_iou_loss(pred, gt_boxes[pos], reduction="sum")
                loss_box = self.giou_loss_weight * loss_box / labels.numel()
            else:
                loss_box = deltas.sum() * 0
            losses[f"loss_classifier_s{stage}"] = weight * loss_cls
            losses[f"loss_box_reg_s{stage}"] = weight * loss_box
            if self.with_masks:
                pos_boxes = [s[0][s[1] > 0] for s in samples]
                pos_matched = [s[2][s[1] > 0] for s in samples]
                if sum(len(b) for b in pos_boxes):
                    x = self.mask_heads[stage](self.mask_roi_pool(features, pos_boxes, image_shapes))
                    mask_logits = self.mask_predictors[stage](x)
                    loss_mask = maskrcnn_loss(mask_logits, pos_boxes, [t["masks"] for t in targets],
                                              [t["labels"] for t in targets], pos_matched)
                else:
                    loss_mask = sum(p.sum() * 0 for p in self.mask_predictors[stage].parameters())
                losses[f"loss_mask_s{stage}"] = weight * loss_mask
            if stage + 1 < len(self.stage_loss_weights):
                rois = self._refine(stage, samples, logits.detach(), deltas.detach(), image_shapes)
        return losses

    def _refine(self, stage, samples, logits, deltas, image_shapes):
        """The sampled RoIs regressed by this stage with their target class (background RoIs
        with their best-scoring class), ground-truth RoIs dropped (mmdet's ``refine_bboxes``)."""
        labels = torch.cat([s[1] for s in samples])
        labels = torch.where(labels > 0, labels, logits[:, 1:].argmax(1) + 1)
        boxes = self.box_coders[stage].decode_single(self._class_deltas(deltas, labels),
                                                     torch.cat([s[0] for s in samples]))
        out = []
        for s, chunk, shape in zip(samples, boxes.split([len(s[0]) for s in samples]), image_shapes):
            out.append(box_ops.clip_boxes_to_image(chunk[~s[3]], shape))
        return out

    # ------------------------------------------------------------------ inference

    def _detect(self, features, proposals, image_shapes):
        rois, stage_logits = proposals, []
        for stage in range(len(self.stage_ious)):
            logits, deltas = self._box_forward(stage, features, rois, image_shapes)
            stage_logits.append(logits)
            if stage + 1 < len(self.stage_ious):
                labels = logits[:, 1:].argmax(1) + 1
                boxes = self.box_coders[stage].decode_single(self._class_deltas(deltas, labels),
                                                             torch.cat(rois))
                rois = [box_ops.clip_boxes_to_image(b, s)
                        for b, s in zip(boxes.split([len(r) for r in rois]), image_shapes)]
        scores = F.softmax(torch.stack(stage_logits).mean(0), -1)
        boxes = self.box_coders[-1].decode(deltas, rois)  # (N, classes, 4)
        results = []
        for img_boxes, img_scores, shape in zip(boxes.split([len(r) for r in rois]),
                                                scores.split([len(r) for r in rois]), image_shapes):
            img_boxes = box_ops.clip_boxes_to_image(img_boxes, shape)[:, 1:].reshape(-1, 4)
            labels = torch.arange(1, self.num_classes, device=img_scores.device)
            labels = labels.expand(len(img_scores), -1).reshape(-1)
            img_scores = img_scores[:, 1:].reshape(-1)
            keep = torch.where(img_scores > self.score_thresh)[0]
            img_boxes, img_scores, labels = img_boxes[keep], img_scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(img_boxes, 1e-2)
            img_boxes, img_scores, labels = img_boxes[keep], img_scores[keep], labels[keep]
            keep = box_ops.batched_nms(img_boxes, img_scores, labels, self.nms_thresh)
            keep = keep[:self.detections_per_img]
            results.append(dict(boxes=img_boxes[keep], scores=img_scores[keep], labels=labels[keep]))
        if self.with_masks:
            det_boxes = [r["boxes"] for r in results]
            if sum(len(b) for b in det_boxes):
                x = self.mask_roi_pool(features, det_boxes, image_shapes)
                probs = torch.stack([pred(head(x)).sigmoid() for head, pred
                                     in zip(self.mask_heads, self.mask_predictors)]).mean(0)
                labels = torch.cat([r["labels"] for r in results])
                probs = probs[torch.arange(len(labels)), labels][:, None]
            else:
                probs = features["0"].new_zeros(0, 1, 28, 28)
            for r, p in zip(results, probs.split([len(b) for b in det_boxes])):
                r["masks"] = p
        return results
