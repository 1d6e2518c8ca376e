"""The model: architectures by name, decoding and normalisation (defined once), the decoded cache, inference."""
