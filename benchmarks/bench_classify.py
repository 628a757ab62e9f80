"""The classifier that can say "unknown", measured on images it did not train on.

The 300 sample photos (25 classes, 12 each) are featurized with the bundled weights, and the
classifier is fitted by the pipeline's own code (``fruits.classifier.fit``: the sample, the
leave-one-out threshold) on a reference part of them; the rest are the test images:

- **known classes**: each held-out photo of a class the classifier knows: the vote's label
  (``candidates[0]``: top-1 over all of them, and over the ones not rejected) and whether it was
  rejected. Two splits:
  ``frames``, 5 folds interleaved within each class (a held-out photo has near-copies, the
  neighbouring frames of the same fruit, among the reference rows), and ``new views``, the first 8
  photos of each class as reference and the other 4 (mostly a series turned on another axis) held
  out, which is what an app photo is: a new view of a known fruit.
- **unseen classes**: 5 folds of 5 classes left out of the reference set: their photos' share answered
  "unknown" (the reference set of the other 20 classes as in each split).
- **no fruit**: 400 generated images (``fruits.local.not_fruit``: noise, flat colours, line
  drawings, textures): the share answered "unknown".

Each is measured at the default reject quantile and along a sweep of it (the trade-off curve,
``benchmarks/results/classify.png``); figures to ``benchmarks/results/classify.json``. No Spark, a
minute: ``.venv/bin/python benchmarks/bench_classify.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from fruits.classifier.fit import REJECT_QUANTILE, fit, sample
from fruits.classifier.model import Classifier
from fruits.featurize.build import compile_model, load_weights
from fruits.featurize.images import decode
from fruits.featurize.model import Featurizer
from fruits.local.not_fruit import KINDS, not_fruit_images
from fruits.local.paths import BUNDLED_WEIGHTS, SAMPLE_IMAGES
from fruits.local.upload import sample_images

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUANTILES = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3]
FOLDS = 5
NEW_VIEWS_TRAIN = 8  # per class, as tests/test_store.py splits


def featurize(pixels: np.ndarray, featurizer: Featurizer) -> np.ndarray:
    return np.concatenate([featurizer(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])


def classifier(features: np.ndarray, labels: np.ndarray, rows: np.ndarray, quantile: float) -> Classifier:
    table = pa.table(
        {
            "image_id": [f"id-{i}" for i in rows],
            "label": labels[rows].tolist(),
            "features": pa.array(list(features[rows]), pa.list_(pa.float32())),
            "model_id": ["m"] * len(rows),
        }
    )
    return fit(
        sample(None, table),
        version=1,
        feature_model_id="m",
        source_table_version=0,
        table_id="bench",
        reject_quantile=quantile,
    )


def splits(labels: np.ndarray) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(reference rows, held-out rows) per fold, for each split."""
    position = np.zeros(len(labels), int)
    for name in np.unique(labels):
        rows = np.flatnonzero(labels == name)
        position[rows] = np.arange(len(rows))
    everything = np.arange(len(labels))
    return {
        "frames": [(everything[position % FOLDS != f], everything[position % FOLDS == f]) for f in range(FOLDS)],
        "new views": [(everything[position < NEW_VIEWS_TRAIN], everything[position >= NEW_VIEWS_TRAIN])],
    }


def measure(features: np.ndarray, labels: np.ndarray, other: np.ndarray, quantile: float) -> dict[str, dict]:
    classes = np.unique(labels)
    out = {}
    for split, folds in splits(labels).items():
        best = answered = right_answered = rejected = total = 0
        for reference, held in folds:
            model = classifier(features, labels, reference, quantile)
            for answer, truth in zip(model.answer(features[held]), labels[held]):
                total += 1
                best += answer.candidates[0].label == truth
                rejected += answer.unknown
                answered += not answer.unknown
                right_answered += answer.label == truth
        unseen_rejected = unseen = 0
        for f in range(FOLDS):
            left_out = set(classes[f::FOLDS])
            known = np.array([label not in left_out for label in labels])
            reference = np.concatenate([r for r, _ in folds])  # as the split's reference parts
            reference = np.unique(reference[known[reference]])
            model = classifier(features, labels, reference, quantile)
            unseen_rejected += sum(a.unknown for a in model.answer(features[~known]))
            unseen += int((~known).sum())
        out[split] = {
            "known_top1": best / total,
            "known_top1_answered": right_answered / max(answered, 1),
            "known_rejected": rejected / total,
            "unseen_rejected": unseen_rejected / unseen,
            "held_out": total,
            "unseen": unseen,
        }
    everything = classifier(features, labels, np.arange(len(labels)), quantile)
    answers = everything.answer(other)
    kinds = np.array([KINDS[i % len(KINDS)] for i in range(len(other))])
    out["not fruit"] = {
        "rejected": float(np.mean([a.unknown for a in answers])),
        "by_kind": {k: float(np.mean([a.unknown for a, kind in zip(answers, kinds) if kind == k])) for k in KINDS},
        "images": len(other),
        "threshold": everything.threshold,
    }
    return out


def plot(sweep: dict[float, dict], default: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, marker in (("frames", "o"), ("new views", "s")):
        x = [sweep[q][split]["known_rejected"] for q in QUANTILES]
        ax.plot(
            x,
            [sweep[q][split]["unseen_rejected"] for q in QUANTILES],
            marker=marker,
            label=f"unseen classes rejected ({split})",
        )
        ax.plot(
            x,
            [sweep[q]["not fruit"]["rejected"] for q in QUANTILES],
            marker=marker,
            linestyle=":",
            label=f"not fruit rejected (x: {split})",
        )
        d = sweep[default][split]
        ax.scatter(
            [d["known_rejected"]], [d["unseen_rejected"]], s=160, facecolors="none", edgecolors="black", zorder=5
        )
    ax.axvline(0.03, color="grey", linewidth=0.8)
    ax.axhline(0.8, color="grey", linewidth=0.8)
    ax.set_xlabel("known-class photos answered unknown (held out)")
    ax.set_ylabel("share answered unknown")
    ax.set_title(f"Reject threshold trade-off (circled: default quantile {default})")
    ax.set_xlim(0, 0.6)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(RESULTS / "classify.json"))
    parser.add_argument("--plot", default=str(RESULTS / "classify.png"))
    parser.add_argument("--not-fruit", type=int, default=400, help="generated images that are no fruit")
    args = parser.parse_args()
    featurizer = Featurizer(compile_model(load_weights(str(BUNDLED_WEIGHTS))))
    images = sample_images(SAMPLE_IMAGES)
    labels = np.array([label for label, _ in images])
    features = featurize(np.stack([decode(p.read_bytes()) for _, p in images]), featurizer)
    other = featurize(np.stack([decode(data) for _, data in not_fruit_images(args.not_fruit, seed=11)]), featurizer)
    sweep = {q: measure(features, labels, other, q) for q in QUANTILES}
    default = sweep[REJECT_QUANTILE]
    result = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": len(images),
        "classes": int(len(np.unique(labels))),
        "reject_quantile": REJECT_QUANTILE,
        "default": default,
        "sweep": {str(q): v for q, v in sweep.items()},
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    plot(sweep, REJECT_QUANTILE, Path(args.plot))
    for split in ("frames", "new views"):
        d = default[split]
        print(
            f"{split:>9}: known top-1 {d['known_top1']:.3f} (answered {d['known_top1_answered']:.3f}), known "
            f"rejected {d['known_rejected']:.3f}, unseen classes rejected {d['unseen_rejected']:.3f}"
        )
    print(f"not fruit rejected {default['not fruit']['rejected']:.3f} {default['not fruit']['by_kind']}")
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
