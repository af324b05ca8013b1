"""The LM Studio side: HTTP client, streaming, errors, model validation."""
