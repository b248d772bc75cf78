"""`fraudq tune`: search GPTQ recipes for the smallest model the validation set cannot tell from the baseline.

space.py     the recipes: keys, ids, the cpu and full lists, candidate files, engine routing
sizing.py    average bits per weight, estimated from the original model or measured on a checkpoint
inputs.py    the validation set (given, or split off the calibration data) and each recipe's calibration file
candidate.py one candidate quantized and evaluated (resumable by stamps); layer sensitivity for mixed precision
search.py    the order, the pruning, the acceptance rule and the choice; run_tune
report.py    tune.json, tune.md, the terminal table, the plot, the threshold and the test-set report
"""
