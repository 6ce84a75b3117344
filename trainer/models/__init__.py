"""The re-ID encoder adapted by SpCL (Ge et al., NeurIPS 2020), its weights and its export file.

* :mod:`~trainer.models.encoder`: backbone → global pooling (avg or GeM) → BN neck with a frozen
  zero bias → L2-normalised embedding (no classifier: SpCL's memory plays that role).
* :mod:`~trainer.models.dsbn`: domain-specific BatchNorm for source → target adaptation.
* :mod:`~trainer.models.weights`: offline ImageNet / state-dict weights and :func:`build_encoder`.
* :mod:`~trainer.models.export`: :func:`save_model` / :func:`load_model` single-file exports.
"""

from trainer.models.dsbn import (
    DOMAINS,
    DSBN1d,
    DSBN2d,
    collapse_dsbn,
    convert_dsbn,
    dsbn_domain,
    plain_state_dict,
    set_domain,
)
from trainer.models.encoder import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOLINGS,
    Encoder,
    GeneralizedMeanPooling,
)
from trainer.models.export import FORMAT_VERSION, InvalidModelFile, load_model, save_model
from trainer.models.weights import (
    IncompatibleWeights,
    LoadReport,
    WeightsUnavailable,
    build_encoder,
    hub_checkpoint_dir,
    imagenet_weights_path,
    load_weights,
)

__all__ = [
    "ARCHS",
    "DOMAINS",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "DSBN1d",
    "DSBN2d",
    "Encoder",
    "GeneralizedMeanPooling",
    "IncompatibleWeights",
    "InvalidModelFile",
    "LoadReport",
    "WeightsUnavailable",
    "build_encoder",
    "collapse_dsbn",
    "convert_dsbn",
    "dsbn_domain",
    "hub_checkpoint_dir",
    "imagenet_weights_path",
    "load_model",
    "load_weights",
    "plain_state_dict",
    "save_model",
    "set_domain",
]
