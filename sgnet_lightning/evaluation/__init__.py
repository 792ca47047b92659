"""Evaluation: overlap, surface-distance and lesion-wise metrics shared by validation, ``sgnet test``
and ``sgnet evaluate``.

``METRICS`` lists every metric name a results file may hold and whether higher is better (None:
descriptive, no better or worse); the statistics and the report read the direction from here.
"""

# Gate levels that get a ``gate_open_fraction_<level>`` name (level 0 = the coarsest gate, as the
# training log's ``gate/open_fraction_<level>``): SG-Net has one gate per skip connection, 3 with the
# seed's 4 stages; 8 covers any depth the registry builds.
GATE_LEVELS = 8


def gate_open_fraction_metric(level: int) -> str:
    """Results name of one gate level's open fraction: open voxels / all voxels over every sliding
    window of a subject (region ``all``), written by ``sgnet test`` for networks with gates."""
    return f"gate_open_fraction_{level}"


METRICS: dict[str, bool | None] = {
    # name: higher_is_better (None: descriptive)
    "dice": True,
    "precision": True,
    "recall": True,
    "hd95_mm": False,
    "assd_mm": False,
    "nsd": True,  # normalised surface Dice at a tolerance in mm
    "volume_pred_ml": None,
    "volume_ref_ml": None,
    "lesion_dice": True,
    "lesion_hd95_mm": False,
    "lesion_tp": True,
    "lesion_fn": False,
    "lesion_fp": False,
    "lesion_f1": True,
    # how much of the network the gates let through: says what a gate does, not how good it is
    **{gate_open_fraction_metric(level): None for level in range(GATE_LEVELS)},
}


def higher_is_better(metric: str) -> bool | None:
    """Direction of ``metric`` (None for a descriptive one: volumes, gate open fractions); unknown
    names raise ``KeyError`` naming the known ones."""
    try:
        return METRICS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None
