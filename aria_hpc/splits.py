"""The split names, in one place. A paired combination is seen, under-represented or unseen (no
paired image); a pool prompt carries its combination's split as a code 0, 1, 2, or -1 when it belongs
to no combination (a user's own pool). Evaluation reports one group per code, and a report adds "all".
"""

SPLITS = ("seen", "under", "unseen")  # pool split codes 0, 1, 2
UNLABELLED = "unlabelled"  # pool split code -1
SPLIT_GROUPS = (*SPLITS, UNLABELLED)  # what eval.json's groups are, indexed by split code (-1 last)
REPORT_GROUPS = (*SPLIT_GROUPS, "all")
