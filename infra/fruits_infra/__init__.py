"""The AWS CDK app of the pipeline: one stack per stage (see infra/README.md)."""

from .stack import FruitsStack, StageConfig

__all__ = ["FruitsStack", "StageConfig"]
