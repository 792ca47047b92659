"""Evaluation: overlap, surface-distance and lesion-wise metrics shared by validation, ``sgnet test``
and ``sgnet evaluate``.

``METRICS`` lists every metric name a results file may hold and whether higher is better; the
statistics and the report read the direction from here.
"""

METRICS: dict[str, bool] = {
    # name: higher_is_better
    "dice": True,
    "precision": True,
    "recall": True,
    "hd95_mm": False,
    "assd_mm": False,
    "nsd": True,  # normalised surface Dice at a tolerance in mm
    "volume_pred_ml": True,  # descriptive; direction unused
    "volume_ref_ml": True,  # descriptive; direction unused
    "lesion_dice": True,
    "lesion_hd95_mm": False,
    "lesion_tp": True,
    "lesion_fn": False,
    "lesion_fp": False,
    "lesion_f1": True,
}


def higher_is_better(metric: str) -> bool:
    """Direction of ``metric``; unknown names raise ``KeyError`` naming the known ones."""
    try:
        return METRICS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None
