# CSWin-L at 384. The official repository gives no fine-tuning command for it (issue #47 asks for
# its drop-path rate): this config reuses the released 22K -> 1K 224 fine-tune recipe at 384 with
# the batch of the B 384 fine-tune; treat it as a starting point, not the paper's record.
# Official README: 87.5 top-1.
_base_ = ["./cswin_large_224.py"]
model = "cswin_large_384"
img_size = 384
batch_size = 32
lr_base_size = 256
lr_base = 1.25e-4
