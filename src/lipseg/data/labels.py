"""The label ids of lip masks (EVALUATION.md): what every mask, training target and scorer agrees on."""

from __future__ import annotations

BACKGROUND, UPPER_LIP, INNER_MOUTH, LOWER_LIP = 0, 1, 2, 3
LABELS: dict[int, str] = {
    BACKGROUND: "background",
    UPPER_LIP: "upper_lip",
    INNER_MOUTH: "inner_mouth",
    LOWER_LIP: "lower_lip",
}
NUM_CLASSES = len(LABELS)
IGNORE = 255  # a pixel no loss is taken on and no score counts (e.g. a face-parsing class with no lip meaning)
LIP_CLASS_IDS = (BACKGROUND, UPPER_LIP, INNER_MOUTH, LOWER_LIP, IGNORE)
