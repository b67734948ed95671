"""Evaluation of fine-tuned models: generate images on fixed seeds, then score and compare them.

One module per job: ``prompts`` (prompt lists), ``generate`` (images + index), ``fid`` (style FID and
KID), ``rewards`` (PickScore, HPSv2, LAION aesthetics, CLIP score, ImageReward), ``winrate``
(per-prompt medians, bootstrap CI), ``vendi`` (diversity), ``implicit_acc`` (DPO implicit reward
accuracy) and ``report`` (Markdown table, image grids, bar plots). Every command writes its result as
JSON beside the images it measured, so ``report`` can gather them.
"""
