"""Segmentation metrics computed the way mmsegmentation's ``IoUMetric`` computes them.

Per image: pixels whose label is ``ignore_index`` are dropped (with ``reduce_zero_label``, label 0
becomes ``ignore_index`` and every other label shifts down by one first, ADE20K's convention),
then per-class intersection, prediction area and label area are counted. Over the data set the
counts are summed before dividing: ``IoU_c = sum(intersection_c) / sum(union_c)``, NaN for a class
that never occurs in labels or predictions, and mIoU / mAcc are NaN-means over classes; aAcc is
the total intersection over the total labelled area.
"""
import torch

__all__ = ["IoUMetric", "intersect_and_union", "iou_scores"]


def intersect_and_union(pred, label, num_classes, ignore_index=255, reduce_zero_label=False):
    """Per-class (intersection, union, prediction area, label area) of one image's class maps."""
    pred, label = torch.as_tensor(pred), torch.as_tensor(label).clone()
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ")
    if reduce_zero_label:
        label[label == 0] = ignore_index
        label = label - 1
        label[label == ignore_index - 1] = ignore_index
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"label ids must lie in [0, {num_classes}) or equal ignore_index "
                         f"{ignore_index}; found {sorted(set(label.unique().tolist()))[:8]}")
    intersect = pred[pred == label]
    area_intersect = torch.bincount(intersect, minlength=num_classes)[:num_classes]
    area_pred = torch.bincount(pred[(pred >= 0) & (pred < num_classes)],
                               minlength=num_classes)[:num_classes]
    area_label = torch.bincount(label, minlength=num_classes)[:num_classes]
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def iou_scores(totals):
    """aAcc, mIoU, mAcc (percent) and the per-class IoU and Acc (percent, tensors) of the
    per-class counts of :func:`intersect_and_union` summed over a data set: ``totals`` stacks
    (intersection, union, prediction area, label area)."""
    intersect, union, _, label = totals
    iou = intersect / union  # 0 / 0 -> NaN for classes absent everywhere
    acc = intersect / label
    return dict(aAcc=100 * (intersect.sum() / label.sum()).item(),
                mIoU=100 * torch.nanmean(iou).item(), mAcc=100 * torch.nanmean(acc).item(),
                IoU=100 * iou, Acc=100 * acc)


class IoUMetric:
    """Accumulates :func:`intersect_and_union` over images; :meth:`compute` gives aAcc, mIoU,
    mAcc (percent) and the per-class IoU / Acc."""

    def __init__(self, num_classes, ignore_index=255, reduce_zero_label=False, class_names=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self):
        self.totals = torch.zeros(4, self.num_classes, dtype=torch.float64)

    def update(self, preds, labels):
        """``preds``: (B, H, W) class ids or (B, C, H, W) logits; ``labels``: (B, H, W)."""
        preds = preds.argmax(1) if preds.dim() == 4 else preds
        for pred, label in zip(preds.cpu(), labels.cpu()):
            counts = intersect_and_union(pred, label, self.num_classes, self.ignore_index,
                                         self.reduce_zero_label)
            self.totals += torch.stack(counts).double()

    def compute(self):
        scores = iou_scores(self.totals)
        scores["IoU"] = dict(zip(self.class_names, scores["IoU"].tolist()))
        scores["Acc"] = dict(zip(self.class_names, scores["Acc"].tolist()))
        return scores
