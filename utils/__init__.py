"""Small cross-cutting helpers: retries, logging, metrics, version."""
