"""What fruit is this: a versioned classifier that can answer "unknown" (``model``), fitted by the
refit from the labelled reference rows (``fit``), kept in the ``classifiers`` table (``registry``)."""

from .fit import ClassifierUpdate, check_quantile, update
from .model import Answer, Candidate, Classifier

__all__ = ["Answer", "Candidate", "Classifier", "ClassifierUpdate", "check_quantile", "update"]
