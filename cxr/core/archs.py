"""The classifier architectures ``train.arch`` may name: built by cxr.models, checked by cxr.config.

A module of its own, free of imports, so that validating params (every command) and loading a served model
never import what the other needs: torch for config, pydantic for serving.
"""

SUPPORTED_ARCHS: frozenset[str] = frozenset(
    {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "efficientnet_b0", "convnext_tiny"}
)
